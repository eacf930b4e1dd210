//! Whole-image decoding against PIL's conversions.

use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn cmyk_jpegs_decode_to_rgb_as_pil_converts_them() {
    let ours = dmlp_vision::decode_rgb(&Path::new(FIXTURES).join("cmyk.jpg")).unwrap();
    let pil = image::open(Path::new(FIXTURES).join("cmyk-pil-rgb.png")).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), pil.dimensions());
    let worst = ours.as_raw().iter().zip(pil.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert_eq!(worst, 0, "CMYK conversion differs from PIL's by {worst} levels");
}

#[test]
fn every_fixture_jpeg_decodes_whole_to_pils_pixels() {
    // Each `jpeg-<kind>.jpg` beside PIL's decode of it (`jpeg-<kind>.rgb`): baseline layouts,
    // progressive, arithmetic-coded, 4:1:1 and 4:4:0, RGB, CMYK, junk between markers.
    let mut kinds = 0;
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if !(name.starts_with("jpeg-") && name.ends_with(".jpg")) {
            continue;
        }
        let pil = std::fs::read(path.with_extension("rgb")).unwrap();
        let ours = dmlp_vision::decode_rgb(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let differing = ours.as_raw().iter().zip(&pil).filter(|(a, b)| a != b).count();
        assert_eq!((ours.as_raw().len(), differing), (pil.len(), 0), "{name}: bytes differing from PIL's decode");
        kinds += 1;
    }
    assert!(kinds >= 15, "only {kinds} fixture JPEGs found");
}
