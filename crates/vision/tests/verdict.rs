//! `dmlp data verify --decode` and training give one verdict per file: verify decodes through the
//! training path (the region decoder over the whole frame, its fallbacks and checks), so a file
//! that would stop a training run is reported by verify; and a file whose headers claim more
//! pixels than its data can hold is refused before anything that size is allocated.

use std::path::{Path, PathBuf};

use dmlp_vision::decode::{decode_region, dimensions};

/// A 64 × 48 baseline JPEG of noise (so the scan has real entropy data).
fn jpeg() -> Vec<u8> {
    let pixels: Vec<u8> =
        (0..64 * 48 * 3).map(|i| ((((i as f64) * 12.9898).sin() * 43758.5453).fract() * 255.0) as u8).collect();
    let image = image::RgbImage::from_raw(64, 48, pixels).unwrap();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).encode_image(&image).unwrap();
    out
}

/// Where the entropy-coded scan starts (after the SOS segment).
fn scan_start(bytes: &[u8]) -> usize {
    let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
    sos + 2 + usize::from(u16::from_be_bytes([bytes[sos + 2], bytes[sos + 3]]))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Training's decode of the whole frame.
fn training(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).unwrap();
    let (w, h) = dimensions(&bytes, path).map_err(|e| e.to_string())?;
    decode_region(&bytes, path, (0, 0, w, h), 1).map(|_| ()).map_err(|e| e.to_string())
}

fn verify(path: &Path) -> Result<Option<String>, String> {
    dmlp_vision::decode_rgb_checked(path).map(|(_, damage)| damage).map_err(|e| e.to_string())
}

/// Training's decode of the whole frame, and the damage it met.
fn training_damage(path: &Path) -> Result<Option<String>, String> {
    let bytes = std::fs::read(path).unwrap();
    let (w, h) = dimensions(&bytes, path).map_err(|e| e.to_string())?;
    decode_region(&bytes, path, (0, 0, w, h), 1).map(|d| d.damage).map_err(|e| e.to_string())
}

#[test]
fn verify_and_training_agree_on_damaged_files() {
    let tmp = tempfile::tempdir().unwrap();
    let good = jpeg();
    let start = scan_start(&good);
    let mut cut = good[..start + (good.len() - start) * 3 / 5].to_vec();
    cut.extend([0xFF, 0xD9]);
    let mut flipped = good.clone();
    for i in (start + 40..good.len() - 10).step_by(7) {
        flipped[i] ^= 0x5A;
    }
    let truncated = good[..good.len() - 30].to_vec();
    let cases =
        [("good.jpg", good.clone()), ("cut-with-eoi.jpg", cut), ("flipped.jpg", flipped), ("truncated.jpg", truncated)];
    for (name, bytes) in cases {
        let path = write(tmp.path(), name, &bytes);
        let (v, t) = (verify(&path), training_damage(&path));
        assert_eq!(v, t, "{name}: verify and training disagree");
        // Before, verify decoded with zune-jpeg, which accepts the cut file: training then
        // stopped mid-epoch on a file verify had passed. Now both decode the damaged files as
        // libjpeg (and PIL) does, and say they are damaged; a file without its end is an error
        // in both, as in PIL, and so is the flipped one (its flips made a marker libjpeg does
        // not know, 0x19: PIL fails with "broken data stream").
        match name {
            "good.jpg" => assert_eq!(v, Ok(None)),
            "cut-with-eoi.jpg" => assert!(v.as_ref().is_ok_and(Option::is_some), "{name}: {v:?}"),
            _ => assert!(v.is_err(), "{name}: {v:?}"),
        }
    }
    assert!(training(&write(tmp.path(), "x.jpg", &good)).is_ok());
}

#[test]
fn a_file_claiming_more_pixels_than_its_data_can_hold_is_refused_up_front() {
    let tmp = tempfile::tempdir().unwrap();
    let mut lying = jpeg();
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = lying.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    lying[sof + 5..sof + 9].copy_from_slice(&[0x40, 0x00, 0x40, 0x00]); // 16384 × 16384
    assert!(lying.len() < 16 * 1024);
    let path = write(tmp.path(), "lying.jpg", &lying);
    for err in [verify(&path).unwrap_err(), training(&path).unwrap_err()] {
        assert!(err.contains("claim 16384 × 16384 pixels") && err.contains("lying.jpg"), "{err}");
    }
}

#[test]
fn a_file_over_the_size_limit_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("huge.jpg");
    // Sparse: no disk or memory is spent.
    std::fs::File::create(&path).unwrap().set_len(dmlp_vision::decode::MAX_FILE_BYTES + 1).unwrap();
    let err = dmlp_vision::read_bytes(&path).unwrap_err().to_string();
    assert!(err.contains("huge.jpg") && err.contains("limit"), "{err}");
}

#[test]
fn ten_crop_of_an_extreme_aspect_ratio_resizes_only_its_windows() {
    // 1 × 16384: ten-crop's whole-image resize to a shorter side of 256 would be 256 × 4194304
    // (3 GB). Before, that was an error; each crop is now resized from its window alone.
    let image = image::RgbImage::from_pixel(1, 16384, image::Rgb([90, 120, 150]));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&image).unwrap();
    let path = Path::new("tall.jpg");
    let norm = dmlp_vision::Normalization { mean: [0.5; 3], std: [0.25; 3] };
    let mut renderer = dmlp_vision::Renderer::new();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let ten = dmlp_vision::Transform::ten_crop_for(224);
    let mut out = vec![f32::NAN; ten.floats_per_image()];
    renderer.render(&bytes, path, &[ten], &norm, &mut rng, &mut [&mut out]).unwrap();
    // A flat colour: every pixel of every crop is that colour (within the JPEG's rounding).
    for (c, level) in [90.0f32, 120.0, 150.0].into_iter().enumerate() {
        let expected = (level / 255.0 - 0.5) / 0.25;
        for crop in 0..10 {
            let plane = &out[(crop * 3 + c) * 224 * 224..][..224 * 224];
            assert!(plane.iter().all(|v| (v - expected).abs() < 0.1), "crop {crop} channel {c}");
        }
    }
    // The centre crop resizes only the window it keeps, too.
    let centre = dmlp_vision::Transform::eval_for(224);
    let mut out = vec![0f32; centre.floats_per_image()];
    renderer.render(&bytes, path, &[centre], &norm, &mut rng, &mut [&mut out]).unwrap();
}

#[test]
fn the_end_of_image_is_found_by_walking_the_stream_not_in_the_last_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = jpeg();
    // A motion photo's or maker's trailer after the end-of-image marker: 64 KB, no FF D9 in it.
    let mut trailed = good.clone();
    trailed.extend((0..65536u32).map(|i| (i % 251) as u8 & 0x7F));
    let path = write(tmp.path(), "trailed.jpg", &trailed);
    assert!(verify(&path).is_ok() && training(&path).is_ok(), "{:?}", verify(&path));

    // A file cut inside its scan whose EXIF thumbnail (an APP1 segment) holds FF D9: the old
    // check found that marker in the last 4 KB and let crops above the cut decode.
    let thumbnail: Vec<u8> = [0xFF, 0xD8, 0xFF, 0xD9].repeat(8);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend(u16::try_from(thumbnail.len() + 2).unwrap().to_be_bytes());
    app1.extend(&thumbnail);
    let mut cut = good[..2].to_vec();
    cut.extend(&app1);
    let start = scan_start(&good);
    cut.extend(&good[2..start + (good.len() - start) / 2]);
    assert!(cut.len() < 4096 && cut.windows(2).any(|w| w == [0xFF, 0xD9]));
    let path = write(tmp.path(), "cut-thumbnail.jpg", &cut);
    let (v, t) = (verify(&path), training(&path));
    assert!(v.as_ref().is_err_and(|e| e.contains("end-of-image")), "{v:?}");
    assert!(t.as_ref().is_err_and(|e| e.contains("end-of-image")), "{t:?}");
    // And a crop of its first rows, above the cut, fails too: the verdict does not depend on
    // where a random crop falls.
    let bytes = std::fs::read(&path).unwrap();
    let err = decode_region(&bytes, &path, (0, 0, 16, 8), 1).unwrap_err().to_string();
    assert!(err.contains("end-of-image"), "{err}");
}

#[test]
fn a_flood_of_table_segments_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let good = jpeg();
    // 50,000 empty Huffman tables (each 21 bytes: FF C4, length 19, class/id, 16 zero counts)
    // after the start-of-image: a valid-looking 1 MB file that made decoding 40 times slower.
    let mut flood = good[..2].to_vec();
    for _ in 0..50_000 {
        flood.extend([0xFF, 0xC4, 0x00, 0x13, 0x00]);
        flood.extend([0u8; 16]);
    }
    flood.extend(&good[2..]);
    let path = write(tmp.path(), "flood.jpg", &flood);
    for err in [verify(&path).unwrap_err(), training(&path).unwrap_err()] {
        assert!(err.contains("flood.jpg") && err.contains("table segments"), "{err}");
    }
    // A real file's few tables pass.
    assert!(verify(&write(tmp.path(), "good.jpg", &good)).is_ok());
}

#[test]
fn an_arithmetic_coded_file_may_spend_less_than_a_bit_per_block() {
    // 2048 × 2048 of one colour in about 200 bytes (cjpeg -arithmetic): PIL reads it. The
    // Huffman bound (a bit per block: 8 KB here) does not apply; the coefficient decoder's
    // memory budget, which grows with the file's length, does.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/arith-flat-2048.jpg");
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() < 1024);
    let image = dmlp_vision::decode_rgb(&path).unwrap();
    assert_eq!(image.dimensions(), (2048, 2048));
    assert!(image.pixels().all(|p| p.0 == [90, 119, 149]), "PIL's pixel everywhere");
    // The same bytes claiming 16384 × 16384: 805 MB of coefficients from a 214-byte file.
    let mut lying = bytes.clone();
    let sof = lying.windows(2).position(|w| w == [0xFF, 0xC9]).unwrap();
    lying[sof + 5..sof + 9].copy_from_slice(&[0x40, 0x00, 0x40, 0x00]);
    let tmp = tempfile::tempdir().unwrap();
    let lying_path = write(tmp.path(), "lying-arith.jpg", &lying);
    let err = dmlp_vision::decode_rgb(&lying_path).unwrap_err().to_string();
    assert!(err.contains("lying-arith.jpg") && err.contains("16384 × 16384") && err.contains("MiB"), "{err}");
}
