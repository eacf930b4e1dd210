//! EXIF orientation applied to pixels, as Pillow's `ImageOps.exif_transpose` and phone
//! galleries do.

use image::RgbImage;
use image::imageops::{flip_horizontal, flip_vertical, rotate90, rotate180, rotate270};

/// `image` turned upright for the EXIF orientation `orientation` (1–8; anything else leaves it
/// as stored): 2 mirrors it, 3 turns it half round, 4 flips it upside down, 5 transposes it,
/// 6 turns it a quarter clockwise, 7 transverses it, 8 a quarter anticlockwise.
pub fn orient(image: RgbImage, orientation: u8) -> RgbImage {
    match orientation {
        2 => flip_horizontal(&image),
        3 => rotate180(&image),
        4 => flip_vertical(&image),
        5 => flip_horizontal(&rotate90(&image)),
        6 => rotate90(&image),
        7 => flip_horizontal(&rotate270(&image)),
        8 => rotate270(&image),
        _ => image,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_orientation_maps_pixels_as_the_exif_standard_says() {
        // A 3 × 2 image whose pixels carry their coordinates.
        let stored = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 0]));
        let (w, h) = (3u32, 2u32);
        // Where stored pixel (x, y) lands, per orientation (the standard's definitions).
        type Landing = fn(u32, u32, u32, u32) -> (u32, u32);
        let expected: [(u8, Landing, bool); 8] = [
            (1, |x, y, _, _| (x, y), false),
            (2, |x, y, w, _| (w - 1 - x, y), false),
            (3, |x, y, w, h| (w - 1 - x, h - 1 - y), false),
            (4, |x, y, _, h| (x, h - 1 - y), false),
            (5, |x, y, _, _| (y, x), true),
            (6, |x, y, _, h| (h - 1 - y, x), true),
            (7, |x, y, w, h| (h - 1 - y, w - 1 - x), true),
            (8, |x, y, w, _| (y, w - 1 - x), true),
        ];
        for (orientation, to, swaps) in expected {
            let upright = orient(stored.clone(), orientation);
            assert_eq!(upright.dimensions(), if swaps { (h, w) } else { (w, h) }, "orientation {orientation}");
            for (x, y, pixel) in stored.enumerate_pixels() {
                let (ux, uy) = to(x, y, w, h);
                assert_eq!(upright.get_pixel(ux, uy), pixel, "orientation {orientation}: ({x}, {y}) → ({ux}, {uy})");
            }
        }
        assert_eq!(orient(stored.clone(), 0), stored);
        assert_eq!(orient(stored.clone(), 9), stored);
    }
}
