//! Whole-image decoding against PIL's conversions.

use std::path::Path;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

#[test]
fn cmyk_jpegs_decode_to_rgb_as_pil_converts_them() {
    let ours = dmlp_vision::decode_rgb(&Path::new(FIXTURES).join("cmyk.jpg")).unwrap();
    let pil = image::open(Path::new(FIXTURES).join("cmyk-pil-rgb.png")).unwrap().to_rgb8();
    assert_eq!(ours.dimensions(), pil.dimensions());
    let worst = ours.as_raw().iter().zip(pil.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 3, "CMYK conversion differs from PIL's by {worst} levels");
}
