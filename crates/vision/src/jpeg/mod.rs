//! A JPEG decoder for the input pipeline that decodes only what a view needs, with
//! libjpeg-turbo's arithmetic (islow inverse DCT, "fancy" triangular chroma upsampling, the
//! fixed-point YCbCr → RGB of `jdcolor.c`), so that its pixels equal PIL's, scaled or not.
//!
//! Two decoders share the inverse DCT, upsampling and colour conversion (`Layout`, `upsample`):
//! - streaming, for Huffman-coded 8-bit files with one interleaved scan, grayscale or YCbCr
//!   with 4:4:4, 4:2:2 or 4:2:0 chroma (what cameras and phones write): only the rows down to
//!   the region's last are entropy-decoded, only the region's blocks inverse-transformed, at
//!   1/2, 1/4 or 1/8 scale straight from the DCT where the caller asks;
//! - `coefficients`, for every other 8-bit file PIL reads (progressive, arithmetic-coded,
//!   several scans, other sampling, RGB, CMYK, YCCK): all scans into coefficient buffers, then
//!   the region's blocks.
//!
//! 12-bit and lossless files get `Ok(None)`, for the general decoder (which refuses them, as
//! PIL does).
//!
//! Markers are read as libjpeg reads them: junk bytes before a marker are skipped, short APPn
//! segments ignored. Damaged entropy-coded data is decoded as libjpeg decodes it, and the
//! damage is reported ([`RegionImage::damage`]), never hidden: an invalid Huffman code reads as
//! symbol 0 (17 bits consumed); a run past a block's end puts its coefficient at the last
//! place; stray bytes before a restart marker are skipped and a marker out of order is
//! resynchronised as `jpeg_resync_to_restart` does; data that runs out (a marker comes early)
//! leaves the rest of the restart interval's blocks all-zero (flat grey in a sequential file).
//! Rows below a region are not read, so damage there goes unnoticed by a region's decode;
//! `dmlp data verify --decode` decodes every file whole.

mod arithmetic;
mod coefficients;
mod entropy;
mod header;
mod idct;
#[cfg(target_arch = "x86_64")]
mod idct_avx2;
mod upsample;

use entropy::BitReader;
use header::{Frame, Parsed};
pub(crate) use header::{frame_size, is_arithmetic, stream_walk};
use idct::Idct;

/// The zigzag order: `ZIGZAG[k]` is the natural (row-major) index of the `k`-th coefficient.
pub(crate) const ZIGZAG: [usize; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21,
    28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54,
    47, 55, 62, 63,
];

/// RGB pixels of a region of a JPEG decoded at `1 / scale`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RegionImage {
    /// `width × height` RGB pixels.
    pub(crate) pixels: Vec<u8>,
    pub(crate) width: u32,
    pub(crate) height: u32,
    /// The region's top-left corner in the scaled image.
    pub(crate) origin: (u32, u32),
    /// The whole scaled image's size: `ceil(full / scale)` per side.
    pub(crate) scaled_size: (u32, u32),
    /// The file's own width and height.
    pub(crate) full_size: (u32, u32),
    /// Damage met in the data decoded (libjpeg's corrupt-data warnings: PIL reads such a file
    /// and gets these pixels), or `None`.
    pub(crate) damage: Option<String>,
}

/// The largest side this decoder takes (zune-jpeg's default limit): a corrupt header cannot
/// make it allocate more than a 16384² image's planes.
const MAX_SIDE: usize = 1 << 14;

/// The largest plane buffer a thread keeps between decodes.
const KEPT_PLANE_BYTES: usize = 4 << 20;

thread_local! {
    /// Plane buffers kept between decodes on a thread (fresh ones of this size cost page faults).
    static PLANE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One component's samples over the decoded MCUs.
struct Plane {
    h: usize,
    v: usize,
    idct: Idct,
    /// Upsampling to the output grid, per axis: 1 or 2.
    up_h: usize,
    up_v: usize,
    /// Samples the component has over the whole image at this scale.
    samples_w: usize,
    samples_h: usize,
    /// Global sample coordinates of `data[0]`.
    origin_x: usize,
    origin_y: usize,
    width: usize,
    data: Vec<u8>,
    /// libjpeg-turbo's "fancy" triangular upsampling, per axis; else samples are replicated.
    fancy_h: bool,
    fancy_v: bool,
}

impl Plane {
    fn row(&self, y: usize) -> &[u8] {
        let start = (y - self.origin_y) * self.width;
        &self.data[start..start + self.width]
    }
}

/// Decodes the pixels `[x0, x1) × [y0, y1)` (full-resolution coordinates) of the JPEG `bytes`
/// at `1 / scale` (1, 2, 4 or 8). The result covers the scaled pixels that region touches.
/// Single-scan Huffman-coded grayscale and YCbCr 4:4:4, 4:2:2 and 4:2:0 files are decoded
/// streaming, down to the region's last row; other kinds through `coefficients`.
/// `Ok(None)`: a kind of JPEG neither reads (12-bit, lossless; see the module docs).
pub(crate) fn decode_region(
    bytes: &[u8],
    region: (u32, u32, u32, u32),
    scale: u32,
) -> Result<Option<RegionImage>, String> {
    if !matches!(scale, 1 | 2 | 4 | 8) {
        return Err(format!("DCT scale {scale}: only 1, 2, 4 and 8 exist"));
    }
    let frame = match header::parse(bytes)? {
        Parsed::Frame(frame) => frame,
        Parsed::Unsupported => return coefficients::decode_region(bytes, region, scale),
    };
    if frame.width > MAX_SIDE || frame.height > MAX_SIDE {
        return Ok(None); // the general decoder's limits apply (and name the file)
    }
    let samplings: Vec<(usize, usize)> = frame.components.iter().map(|c| (c.h, c.v)).collect();
    let (layout, mut planes) = Layout::new(frame.width, frame.height, &samplings, region, scale)?;
    let decoded = decode_mcus(bytes, &frame, &mut planes, layout.mcus_x, layout.mx, layout.my.1, layout.my.0);
    layout.finish(planes, frame.color, decoded).map(Some)
}

/// What a region of an image needs decoded: the output pixels, the MCUs under them, and the
/// planes (one per component) that the MCUs' blocks are transformed into.
struct Layout {
    full_size: (usize, usize),
    scaled_size: (usize, usize),
    /// Output pixels, scaled-image coordinates, end exclusive.
    out_x: (usize, usize),
    out_y: (usize, usize),
    mcus_x: usize,
    /// MCU columns and rows to transform, inclusive.
    mx: (usize, usize),
    my: (usize, usize),
}

impl Layout {
    /// The layout of `region` of a `width × height` image whose components have the sampling
    /// factors `samplings`, at `1 / scale`, and its planes (buffers sized, not yet written).
    fn new(
        width: usize,
        height: usize,
        samplings: &[(usize, usize)],
        (x0, y0, x1, y1): (u32, u32, u32, u32),
        scale: u32,
    ) -> Result<(Self, Vec<Plane>), String> {
        if x0 >= x1 || y0 >= y1 || x1 as usize > width || y1 as usize > height {
            return Err(format!("region ({x0}, {y0})–({x1}, {y1}) is not inside the {width}×{height} image"));
        }
        let (scale, bs) = (scale as usize, 8 / scale as usize);
        let (scaled_w, scaled_h) = (width.div_ceil(scale), height.div_ceil(scale));
        let out_x = (x0 as usize / scale, (x1 as usize).div_ceil(scale).min(scaled_w));
        let out_y = (y0 as usize / scale, (y1 as usize).div_ceil(scale).min(scaled_h));
        let max_h = samplings.iter().map(|s| s.0).max().unwrap_or(1);
        let max_v = samplings.iter().map(|s| s.1).max().unwrap_or(1);
        let (mcus_x, mcus_y) = (width.div_ceil(8 * max_h), height.div_ceil(8 * max_v));
        let mut planes = plan_planes((width, height), samplings, bs, max_h, max_v);
        // MCUs the output needs: each plane's samples under it, and for fancy upsampling the
        // neighbouring sample on each side (clamped to the image).
        let span = |out: (usize, usize), up: usize, fancy: bool, samples: usize, per_mcu: usize| {
            let (mut lo, mut hi) = (out.0 / up, (out.1 - 1) / up);
            if up == 2 && fancy {
                (lo, hi) = (lo.saturating_sub(1), (hi + 1).min(samples - 1));
            }
            (lo / per_mcu, hi / per_mcu)
        };
        let union = |a: (usize, usize), b: (usize, usize)| (a.0.min(b.0), a.1.max(b.1));
        let (mut mx, mut my) = ((usize::MAX, 0), (usize::MAX, 0));
        for p in &planes {
            let size = p.idct.size();
            mx = union(mx, span(out_x, p.up_h, p.fancy_h, p.samples_w, p.h * size));
            my = union(my, span(out_y, p.up_v, p.fancy_v, p.samples_h, p.v * size));
        }
        let (mx, my) = ((mx.0, mx.1.min(mcus_x - 1)), (my.0, my.1.min(mcus_y - 1)));
        let mut spare = PLANE_BUFFERS.with_borrow_mut(std::mem::take);
        for p in &mut planes {
            let size = p.idct.size();
            p.origin_x = mx.0 * p.h * size;
            p.origin_y = my.0 * p.v * size;
            p.width = (mx.1 - mx.0 + 1) * p.h * size;
            // Every byte of the planes is written by an IDCT before it is read, so a kept buffer
            // is only lengthened (zeroing just what it never had), never shortened.
            p.data = spare.pop().unwrap_or_default();
            let needed = p.width * (my.1 - my.0 + 1) * p.v * size;
            if p.data.len() < needed {
                p.data.resize(needed, 0);
            }
        }
        PLANE_BUFFERS.with_borrow_mut(|buffers| *buffers = spare);
        let layout =
            Self { full_size: (width, height), scaled_size: (scaled_w, scaled_h), out_x, out_y, mcus_x, mx, my };
        Ok((layout, planes))
    }

    /// The output pixels from `planes` once `decoded` says they were all written; the plane
    /// buffers are kept for the thread's next decode either way.
    fn finish(
        self,
        planes: Vec<Plane>,
        color: header::Color,
        decoded: Result<Option<String>, String>,
    ) -> Result<RegionImage, String> {
        let (w, h) = (self.out_x.1 - self.out_x.0, self.out_y.1 - self.out_y.0);
        let mut pixels = Vec::new();
        if decoded.is_ok() {
            pixels.reserve_exact(w * h * 3);
            upsample::to_rgb(&planes, color, self.out_x, self.out_y, &mut pixels);
        }
        // Kept for the next decode unless large (a 12-megapixel photo's luma plane), to bound
        // what each worker thread holds on to; in reverse, so the next decode's luma plane gets
        // this one's (the largest).
        PLANE_BUFFERS.with_borrow_mut(|spare| {
            spare.extend(planes.into_iter().rev().map(|p| p.data).filter(|b| b.capacity() <= KEPT_PLANE_BYTES));
        });
        let damage = decoded?;
        Ok(RegionImage {
            damage,
            pixels,
            width: w as u32,
            height: h as u32,
            origin: (self.out_x.0 as u32, self.out_y.0 as u32),
            scaled_size: (self.scaled_size.0 as u32, self.scaled_size.1 as u32),
            full_size: (self.full_size.0 as u32, self.full_size.1 as u32),
        })
    }
}

/// Each component's IDCT size and upsampling, as libjpeg-turbo chooses them: a subsampled
/// component is scaled up by the IDCT (up to 8 × 8) before the upsampler is asked to; the
/// upsampler is "fancy" (triangular) for 2 × 1, 2 × 2 (wider than two samples) and 1 × 2, and
/// replicates samples otherwise (`jinit_upsampler`).
fn plan_planes(
    (width, height): (usize, usize),
    samplings: &[(usize, usize)],
    bs: usize,
    max_h: usize,
    max_v: usize,
) -> Vec<Plane> {
    samplings
        .iter()
        .map(|&(h, v)| {
            let mut size = bs;
            while size < 8 && (max_h * bs).is_multiple_of(h * size * 2) && (max_v * bs).is_multiple_of(v * size * 2) {
                size *= 2;
            }
            let (up_h, up_v) = (max_h * bs / (h * size), max_v * bs / (v * size));
            let samples_w = (width * h * size).div_ceil(max_h * 8);
            // libjpeg-turbo's `do_fancy`: not at 1/8 scale, where the IDCT gives one sample.
            let do_fancy = bs > 1;
            let (fancy_h, fancy_v) = match (up_h, up_v) {
                (2, 1) | (2, 2) if do_fancy && samples_w > 2 => (true, up_v == 2),
                (1, 2) if do_fancy => (false, true),
                _ => (false, false),
            };
            Plane {
                h,
                v,
                idct: Idct::new(size),
                up_h,
                up_v,
                samples_w,
                samples_h: (height * v * size).div_ceil(max_v * 8),
                origin_x: 0,
                origin_y: 0,
                width: 0,
                data: Vec::new(),
                fancy_h,
                fancy_v,
            }
        })
        .collect()
}

/// Entropy-decodes MCU rows `0..=last_row`, transforming the blocks of MCUs in rows
/// `first_row..` and columns `mx` into `planes`. Damaged data is decoded as libjpeg decodes it
/// (see the module docs); what damage was met is returned.
fn decode_mcus(
    bytes: &[u8],
    frame: &Frame,
    planes: &mut [Plane],
    mcus_x: usize,
    mx: (usize, usize),
    last_row: usize,
    first_row: usize,
) -> Result<Option<String>, String> {
    let mut bits = BitReader::new(bytes, frame.scan_start);
    let mut preds = vec![0i32; frame.components.len()];
    let mut coef = [0i32; 64];
    let tables: Vec<_> = frame
        .components
        .iter()
        .map(|c| {
            let dc = frame.dc_tables[c.dc_table].as_ref().expect("checked by the header parser");
            let ac = frame.ac_tables[c.ac_table].as_ref().expect("checked by the header parser");
            (dc, ac, &c.quant_zigzag)
        })
        .collect();
    let (mut done, mut restarts) = (0usize, 0usize);
    // libjpeg's `insufficient_data`: the data ran out (a marker came early); until the next
    // restart, blocks are not decoded and read as all-zero coefficients (flat grey).
    let mut insufficient = false;
    for row in 0..=last_row {
        for col in 0..mcus_x {
            if frame.restart_interval > 0 && done > 0 && done % frame.restart_interval == 0 {
                if bits.restart(restarts) {
                    insufficient = false;
                }
                restarts += 1;
                preds.fill(0);
            }
            done += 1;
            let wanted = row >= first_row && (mx.0..=mx.1).contains(&col);
            for (ci, plane) in planes.iter_mut().enumerate() {
                let (dc, ac, quant) = tables[ci];
                let size = plane.idct.size();
                for by in 0..plane.v {
                    for bx in 0..plane.h {
                        let decoded = if insufficient {
                            Ok(0) // coefficients all zero
                        } else if wanted {
                            bits.block(dc, ac, &mut preds[ci], quant, &mut coef)
                        } else {
                            bits.skip_block(dc, ac, &mut preds[ci]).map(|()| 0)
                        };
                        let last = decoded.map_err(|e| format!("{e} (MCU row {row}, column {col})"))?;
                        if wanted {
                            let y = ((row - first_row) * plane.v + by) * size;
                            let x = ((col - mx.0) * plane.h + bx) * size;
                            let stride = plane.width;
                            plane.idct.run(&coef, last, &mut plane.data[y * stride + x..], stride);
                            // Zeroed again whole: eight vector stores, cheaper than following
                            // the zigzag to the block's last coefficient.
                            coef = [0; 64];
                        }
                    }
                }
            }
            if !insufficient && bits.overran() {
                insufficient = true;
                bits.note_damage(|| format!("the entropy-coded data ends early, in MCU row {row}, column {col}"));
            }
        }
    }
    Ok(bits.damage())
}

/// The tests' random numbers (xorshift64): `next(n)` is in `0..n`.
#[cfg(test)]
fn xorshift(mut state: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 53;
    const H: u32 = 37;
    const LAYOUTS: [&str; 5] = ["ycc420", "ycc422", "ycc444", "gray", "restart"];
    /// Kinds the coefficient decoder reads (`tests/fixtures/make_jpeg_fixtures.py` says how
    /// each was written).
    const COEFFICIENT_KINDS: [&str; 10] =
        ["progressive", "arith", "arith-prog", "ycc411", "ycc440", "rgb", "gray-prog", "prog-restart", "cmyk", "junk"];

    fn all_kinds() -> Vec<&'static str> {
        [LAYOUTS.as_slice(), COEFFICIENT_KINDS.as_slice()].concat()
    }

    fn fixture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn whole(bytes: &[u8], scale: u32) -> RegionImage {
        decode_region(bytes, (0, 0, W, H), scale).unwrap().expect("a layout the decoder reads")
    }

    #[test]
    fn full_decodes_equal_pil_pixel_for_pixel() {
        for name in all_kinds() {
            let image = whole(&fixture(&format!("jpeg-{name}.jpg")), 1);
            let pil = fixture(&format!("jpeg-{name}.rgb"));
            assert_eq!((image.width, image.height, image.origin), (W, H, (0, 0)), "{name}");
            let differing = image.pixels.iter().zip(&pil).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{name}: {differing} of {} bytes differ from PIL's decode", pil.len());
        }
    }

    #[test]
    fn streaming_and_coefficient_decoders_split_the_kinds() {
        for name in LAYOUTS {
            let parsed = header::parse(&fixture(&format!("jpeg-{name}.jpg"))).unwrap();
            assert!(matches!(parsed, Parsed::Frame(_)), "{name} is streamed");
        }
        for name in COEFFICIENT_KINDS {
            let parsed = header::parse(&fixture(&format!("jpeg-{name}.jpg")));
            // The junk file is a streamed layout: junk between markers is skipped.
            let streamed = matches!(parsed, Ok(Parsed::Frame(_)));
            assert_eq!(streamed, name == "junk", "{name}");
        }
    }

    #[test]
    fn twelve_bit_and_lossless_jpegs_are_left_to_the_general_decoder() {
        let mut bytes = fixture("jpeg-progressive.jpg");
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC2]).unwrap();
        bytes[sof + 4] = 12; // precision
        assert_eq!(decode_region(&bytes, (0, 0, W, H), 1), Ok(None));
        bytes[sof + 4] = 8;
        bytes[sof + 1] = 0xC3; // lossless
        assert_eq!(decode_region(&bytes, (0, 0, W, H), 1), Ok(None));
    }

    #[test]
    fn regions_are_crops_of_the_whole_image_at_every_scale() {
        let regions = [
            (0, 0, W, H),
            (0, 0, 1, 1),
            (52, 36, 53, 37),
            (17, 9, 40, 30),
            (1, 20, 53, 37),
            (30, 0, 47, 5),
            (16, 16, 32, 32),
        ];
        for name in all_kinds() {
            let bytes = fixture(&format!("jpeg-{name}.jpg"));
            for scale in [1, 2, 4, 8] {
                let full = whole(&bytes, scale);
                assert_eq!((full.width, full.height), (W.div_ceil(scale), H.div_ceil(scale)));
                for region in regions {
                    let part = decode_region(&bytes, region, scale).unwrap().unwrap();
                    let (x0, y0) = (region.0 / scale, region.1 / scale);
                    let (x1, y1) = (region.2.div_ceil(scale), region.3.div_ceil(scale));
                    assert_eq!(
                        (part.origin, part.width, part.height),
                        ((x0, y0), x1 - x0, y1 - y0),
                        "{name} {region:?}"
                    );
                    for y in 0..part.height {
                        let row = |img: &RegionImage, x: u32, y: u32| {
                            let start = ((y * img.width + x) * 3) as usize;
                            img.pixels[start..start + 3 * part.width as usize].to_vec()
                        };
                        assert_eq!(row(&part, 0, y), row(&full, x0, y0 + y), "{name} scale {scale} {region:?} row {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn scaled_decodes_equal_pils_draft_mode() {
        // PIL's `draft` asks libjpeg-turbo for the same DCT-domain scaling.
        for name in all_kinds() {
            let bytes = fixture(&format!("jpeg-{name}.jpg"));
            for scale in [2, 4, 8] {
                let image = whole(&bytes, scale);
                let pil = fixture(&format!("jpeg-{name}.s{scale}.rgb"));
                assert_eq!(image.pixels.len(), pil.len(), "{name} at 1/{scale}");
                let differing = image.pixels.iter().zip(&pil).filter(|(a, b)| a != b).count();
                assert_eq!(differing, 0, "{name} at 1/{scale}: {differing} of {} bytes differ from PIL's", pil.len());
            }
        }
    }

    #[test]
    fn damaged_entropy_data_is_decoded_as_libjpeg_does_and_reported() {
        // Before, each was an error, though PIL reads them all (libjpeg warns and recovers).
        let cases = [
            ("cut", "the entropy-coded data ends early"),
            ("restart-order", "restart marker 0 missing (found marker 0xD3)"),
            ("codes", "an invalid Huffman code"),
        ];
        for (name, damage) in cases {
            let image = whole(&fixture(&format!("damaged-{name}.jpg")), 1);
            let pil = fixture(&format!("damaged-{name}.rgb"));
            let differing = image.pixels.iter().zip(&pil).filter(|(a, b)| a != b).count();
            assert_eq!(differing, 0, "{name}: {differing} of {} bytes differ from PIL's decode", pil.len());
            let noted = image.damage.unwrap_or_default();
            assert!(noted.starts_with(damage), "{name}: {noted}");
        }
        // Dequantised coefficients past 16 bits (a 16-bit quantisation table 60 times the
        // usual): PIL's SIMD inverse DCT wraps and saturates them; so does this decoder.
        let image = whole(&fixture("damaged-overflow.jpg"), 1);
        let pil = fixture("damaged-overflow.rgb");
        let differing = image.pixels.iter().zip(&pil).filter(|(a, b)| a != b).count();
        assert_eq!(differing, 0, "overflow: {differing} of {} bytes differ from PIL's decode", pil.len());
        // A region above the damage reads clean data, and says so.
        let above = decode_region(&fixture("damaged-cut.jpg"), (0, 0, W, 8), 1).unwrap().unwrap();
        assert_eq!(above.damage, None);
        // Clean files report no damage.
        for name in all_kinds() {
            assert_eq!(whole(&fixture(&format!("jpeg-{name}.jpg")), 1).damage, None, "{name}");
        }
    }

    #[test]
    fn restart_markers_are_resynchronised_as_libjpeg_does() {
        // `jpeg_resync_to_restart`: expecting RST2 (index 10), a marker …
        let data = |marker: u8| [&[0x12, 0x34, 0xFF, marker][..], &[0xAB; 4], &[0xFF, 0xD2, 0x55]].concat();
        // … RST2 itself is taken (after two stray bytes).
        assert_eq!(
            entropy::resync(&data(0xD2), 0, 10, 0),
            (4, true, Some("2 stray bytes before restart marker 2".into()))
        );
        // … one of the next two (RST3, RST4), or a non-restart marker, is left in place.
        for marker in [0xD3, 0xD4, 0xD9] {
            let (pos, resumed, note) = entropy::resync(&data(marker), 0, 10, 0);
            assert_eq!((pos, resumed), (2, false), "{marker:#x}");
            assert!(note.is_some());
        }
        // … one of the previous two (RST1, RST0) is skipped for the next marker, RST2 here.
        for marker in [0xD1, 0xD0] {
            let (pos, resumed, _) = entropy::resync(&data(marker), 0, 10, 0);
            assert_eq!((pos, resumed), (10, true), "{marker:#x}");
        }
        // … one too far off to judge (RST6) is taken as the expected one.
        let (pos, resumed, note) = entropy::resync(&data(0xD6), 0, 10, 0);
        assert_eq!((pos, resumed), (4, true));
        assert!(note.is_some_and(|n| n.contains("stray bytes")));
        // In order and with nothing before it: no damage.
        assert_eq!(entropy::resync(&[0xFF, 0xD2], 0, 2, 0), (2, true, None));
    }

    #[test]
    fn frame_sizes_come_from_the_markers_alone() {
        for name in all_kinds() {
            assert_eq!(frame_size(&fixture(&format!("jpeg-{name}.jpg"))), Some((W, H)), "{name}");
        }
        let bytes = fixture("jpeg-ycc420.jpg");
        let sof = bytes.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        assert_eq!(frame_size(&bytes[..sof + 5]), None, "cut inside the frame header");
        assert_eq!(frame_size(&bytes[..100]), None, "cut before it");
    }

    #[test]
    fn over_full_huffman_tables_are_errors() {
        let mut counts = [0u8; 16];
        counts[0] = 3; // three codes of one bit
        assert!(entropy::HuffTable::new(&counts, &[0, 1, 2], true).is_err());
        counts[0] = 2; // both one-bit codes: full, but valid
        assert!(entropy::HuffTable::new(&counts, &[0, 1], true).is_ok());
    }

    #[test]
    fn damaged_files_give_errors_or_pixels_never_a_panic() {
        // Bytes flipped, cut and duplicated at random in every fixture, decoded at random
        // regions and scales: any outcome but a panic (or a hang) is acceptable.
        let mut random = xorshift(0x9E37_79B9_7F4A_7C15);
        let mut next = |n: usize| random(n as u64) as usize;
        for name in all_kinds() {
            let bytes = fixture(&format!("jpeg-{name}.jpg"));
            for _ in 0..400 {
                let mut damaged = bytes.clone();
                for _ in 0..1 + next(4) {
                    let at = next(damaged.len());
                    match next(3) {
                        0 => damaged[at] = next(256) as u8,
                        1 => damaged.truncate(at.max(4)),
                        _ => damaged.insert(at, 0xFF),
                    }
                }
                let (x0, y0) = (next(W as usize) as u32, next(H as usize) as u32);
                let (x1, y1) = (x0 + 1 + next((W - x0) as usize) as u32, y0 + 1 + next((H - y0) as usize) as u32);
                let scale = [1, 2, 4, 8][next(4)];
                let _ = decode_region(&damaged, (x0, y0, x1, y1), scale);
            }
        }
    }

    #[test]
    fn regions_outside_the_image_are_refused() {
        let bytes = fixture("jpeg-ycc420.jpg");
        assert!(decode_region(&bytes, (0, 0, W + 1, H), 1).is_err());
        assert!(decode_region(&bytes, (5, 5, 5, 9), 1).is_err());
        assert!(decode_region(&bytes, (0, 0, W, H), 3).is_err(), "no 1/3 DCT scale");
    }
}
