//! The image pipeline against the reference's own outputs: PIL decoding + torchvision's
//! `Resize`/`CenterCrop`, `TenCrop` and `resized_crop` on a small JPEG
//! (`tests/fixtures/make_fixtures.py` wrote them), within what antialiased bilinear resizing and
//! two JPEG decoders' rounding allow.

use std::path::{Path, PathBuf};

use dmlp_vision::transform::{Normalization, Renderer, Transform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const NORM: Normalization = Normalization { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference(name: &str) -> Vec<f32> {
    std::fs::read(fixture(&format!("photo-61x47.{name}.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// (max, mean) absolute difference in 8-bit pixel levels between normalised CHW buffers.
fn level_error(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    assert_eq!(ours.len(), theirs.len());
    let plane = ours.len() / 3;
    let (mut max, mut sum) = (0f32, 0f32);
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let c = i / plane;
        let levels = (a - b).abs() * NORM.std[c] * 255.0;
        max = max.max(levels);
        sum += levels;
    }
    (max, sum / ours.len() as f32)
}

fn render(transforms: &[Transform]) -> Vec<Vec<f32>> {
    let path = fixture("photo-61x47.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let mut outs: Vec<Vec<f32>> = transforms.iter().map(|t| vec![0.0; t.floats_per_image()]).collect();
    let mut slots: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    Renderer::new().render(&bytes, &path, transforms, &NORM, &mut ChaCha8Rng::seed_from_u64(0), &mut slots).unwrap();
    outs
}

#[test]
fn resize_and_centre_crop_match_torchvision() {
    let ours = &render(&[Transform::eval_for(32)])[0];
    let (max, mean) = level_error(ours, &reference("eval-32"));
    assert!(max <= 1.01 && mean <= 0.3, "max {max} mean {mean} levels");
}

#[test]
fn ten_crop_matches_torchvision_view_by_view() {
    let ours = &render(&[Transform::ten_crop_for(32)])[0];
    let theirs = reference("tencrop-32");
    let slot = 3 * 32 * 32;
    for k in 0..10 {
        let (max, mean) = level_error(&ours[k * slot..(k + 1) * slot], &theirs[k * slot..(k + 1) * slot]);
        assert!(max <= 1.01 && mean <= 0.3, "crop {k}: max {max} mean {mean} levels");
    }
    // The centre crop of a ten-crop (a whole-image resize, then a crop) is the eval transform
    // (a resize of the crop's window alone).
    let centre = &render(&[Transform::eval_for(32)])[0];
    let (max, _) = level_error(&ours[4 * slot..5 * slot], centre);
    assert!(max <= 1.0, "window resize differs from resize-then-crop by {max} levels");
}

#[test]
fn resized_crops_and_flips_match_torchvision() {
    let path = fixture("photo-61x47.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let mut renderer = Renderer::new();
    for (name, crop, flip) in [("crop-16-flip", (7, 5, 41, 30), true), ("crop-16-up", (20, 10, 12, 9), false)] {
        let mut out = vec![0f32; 3 * 16 * 16];
        renderer.render_crop(&bytes, &path, crop, 16, flip, &NORM, &mut out).unwrap();
        let (max, mean) = level_error(&out, &reference(name));
        assert!(max <= 1.01 && mean <= 0.3, "{name}: max {max} mean {mean} levels");
    }
    let mut out = vec![0f32; 3 * 16 * 16];
    let err = renderer.render_crop(&bytes, &path, (50, 0, 20, 10), 16, false, &NORM, &mut out).unwrap_err();
    assert!(err.to_string().contains("not inside"), "{err}");
}

#[test]
fn multi_scale_views_come_from_one_decode_and_match_single_views() {
    let both = render(&[Transform::eval_for(32), Transform::ten_crop_for(24)]);
    assert_eq!(both[0], render(&[Transform::eval_for(32)])[0]);
    assert_eq!(both[1], render(&[Transform::ten_crop_for(24)])[0]);
}

/// A large photo-like JPEG: smooth colour fields and fine noise.
fn large_jpeg(width: u32, height: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let (xf, yf) = (x as f32 / width as f32, y as f32 / height as f32);
        let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) % 23) as f32;
        image::Rgb([
            (120.0 + 100.0 * (6.0 * xf).sin() + noise) as u8,
            (110.0 + 90.0 * (5.0 * yf).cos() + noise) as u8,
            (100.0 + 80.0 * (7.0 * (xf + yf)).sin() + noise) as u8,
        ])
    });
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Jpeg).unwrap();
    bytes
}

#[test]
fn dct_scaled_decoding_stays_close_to_a_full_decode() {
    let path = Path::new("large.jpg");
    // 2000 × 1500 to 224 (shorter side to 256): decoded at 1/4, then resized.
    let bytes = large_jpeg(2000, 1500);
    for transform in [Transform::eval_for(224), Transform::ten_crop_for(224)] {
        let n = transform.floats_per_image();
        let (mut scaled, mut full) = (vec![0f32; n], vec![0f32; n]);
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        Renderer::new().render(&bytes, path, &[transform], &NORM, &mut rng, &mut [&mut scaled]).unwrap();
        Renderer::without_dct_scaling().render(&bytes, path, &[transform], &NORM, &mut rng, &mut [&mut full]).unwrap();
        let (max, mean) = level_error(&scaled, &full);
        assert!(scaled != full, "the large image should have been decoded scaled");
        assert!(max <= 6.0 && mean <= 0.5, "{transform:?}: max {max} mean {mean} levels");
    }
    // A training crop 4× the target: decoded at 1/4 too.
    let (mut scaled, mut full) = (vec![0f32; 3 * 224 * 224], vec![0f32; 3 * 224 * 224]);
    let crop = (400, 214, 1000, 900);
    Renderer::new().render_crop(&bytes, path, crop, 224, false, &NORM, &mut scaled).unwrap();
    Renderer::without_dct_scaling().render_crop(&bytes, path, crop, 224, false, &NORM, &mut full).unwrap();
    let (max, mean) = level_error(&scaled, &full);
    assert!(scaled != full, "the crop should have been decoded scaled");
    assert!(max <= 6.0 && mean <= 0.6, "crop {crop:?}: max {max} mean {mean} levels");
}

#[test]
fn views_under_four_times_the_target_are_decoded_at_full_scale() {
    // 800 × 600 to 224 would allow halving (600 / 2 ≥ 256), which is not used: the output is
    // the full decode's, bit for bit.
    let bytes = large_jpeg(800, 600);
    let path = Path::new("photo.jpg");
    for transform in [Transform::eval_for(224), Transform::train(224)] {
        let n = transform.floats_per_image();
        let (mut ours, mut full) = (vec![0f32; n], vec![0f32; n]);
        Renderer::new()
            .render(&bytes, path, &[transform], &NORM, &mut ChaCha8Rng::seed_from_u64(4), &mut [&mut ours])
            .unwrap();
        Renderer::without_dct_scaling()
            .render(&bytes, path, &[transform], &NORM, &mut ChaCha8Rng::seed_from_u64(4), &mut [&mut full])
            .unwrap();
        assert!(ours == full, "{transform:?}");
    }
}

#[test]
fn truncated_jpegs_fail_on_both_decoding_paths() {
    let bytes = large_jpeg(2000, 1500);
    let cut = &bytes[..bytes.len() * 95 / 100];
    let path = Path::new("cut.jpg");
    for mut renderer in [Renderer::new(), Renderer::without_dct_scaling()] {
        let mut out = vec![0f32; 3 * 224 * 224];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let err =
            renderer.render(cut, path, &[Transform::eval_for(224)], &NORM, &mut rng, &mut [&mut out]).unwrap_err();
        assert!(err.to_string().contains("cut.jpg"), "{err}");
    }
}

#[test]
fn small_views_of_a_photo_whose_sides_are_not_multiples_of_8_decode_scaled() {
    // A 425 × 250 JPEG (Pillow's icc_profile_big.jpg's size) under a 16² training crop: most
    // crops are decoded at 1/8 in the DCT domain. Before, coordinates were stretched onto the
    // 54 scaled columns, and a crop reaching near the right edge fell past the decoded region:
    // "crop box out of the image boundaries", stopping training (seed 0 did).
    let image = image::RgbImage::from_fn(425, 250, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&image).unwrap();
    let path = std::path::Path::new("odd.jpg");
    let norm = dmlp_vision::Normalization { mean: [0.5; 3], std: [0.25; 3] };
    let mut renderer = dmlp_vision::Renderer::new();
    for transform in [dmlp_vision::Transform::train(16), dmlp_vision::Transform::eval_for(16)] {
        let mut out = vec![0f32; transform.floats_per_image()];
        for seed in 0..300u64 {
            let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
            renderer
                .render(&bytes, path, &[transform], &norm, &mut rng, &mut [&mut out])
                .unwrap_or_else(|e| panic!("{transform:?}, seed {seed}: {e}"));
        }
    }
}

#[test]
fn decoded_pixels_render_as_the_file_does_and_turned_photos_render_upright() {
    // The same views from the file and from its decoded pixels: the same floats.
    let path = fixture("photo-61x47.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let transforms = [Transform::Eval { size: 32, resize: 36 }, Transform::TenCrop { size: 24, resize: 28 }];
    let image = dmlp_vision::decode_rgb(&path).unwrap();
    let from_image = |image: image::RgbImage| {
        let mut outs: Vec<Vec<f32>> = transforms.iter().map(|t| vec![0.0; t.floats_per_image()]).collect();
        let mut slots: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        Renderer::new().render_image(image, &path, &transforms, &NORM, &mut rng, &mut slots).unwrap();
        outs
    };
    let mut outs: Vec<Vec<f32>> = transforms.iter().map(|t| vec![0.0; t.floats_per_image()]).collect();
    let mut slots: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    Renderer::without_dct_scaling().render(&bytes, &path, &transforms, &NORM, &mut rng, &mut slots).unwrap();
    assert_eq!(from_image(image.clone()), outs);
    // Stored turned a quarter anticlockwise with orientation 6: upright, it is the original again.
    let stored = image::imageops::rotate270(&image);
    assert_eq!(from_image(dmlp_vision::orient(stored, 6)), outs);
    let err = Renderer::new()
        .render_image(
            image::RgbImage::new(0, 0),
            &path,
            &transforms[..1],
            &NORM,
            &mut ChaCha8Rng::seed_from_u64(0),
            &mut [&mut vec![0.0; transforms[0].floats_per_image()]],
        )
        .unwrap_err();
    assert!(err.to_string().contains("photo-61x47.jpg"), "{err}");
}
