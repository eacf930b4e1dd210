//! Helpers shared by the op tests.

use candle_core::{DType, Tensor};

pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// Every entry within `tol` times the larger of 1 and the expected values' largest magnitude.
pub(crate) fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().map(|v| v.abs()).fold(1.0, f64::max);
    for (idx, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * scale, "{what}[{idx}]: {x} vs {y}");
    }
}
