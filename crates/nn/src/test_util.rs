//! What the ops' unit tests share: a tensor's values in f64, and a relative closeness check.

use candle_core::{DType, Tensor};

pub(crate) fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// `|a − b| ≤ tol · (1 + |b|)` element by element, naming `what` and the index that fails.
pub(crate) fn close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (idx, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{what}[{idx}]: {x} vs {y}");
    }
}
