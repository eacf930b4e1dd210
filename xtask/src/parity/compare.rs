//! Comparing a computed tensor with the reference's.

use std::fmt;

use anyhow::bail;
use candle_core::{DType, Tensor};

/// Tolerances of a case (`case.json` → `tolerance`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub(crate) struct Tolerance {
    /// `‖out − ref‖₂ / ‖ref‖₂` per tensor.
    pub(crate) rel_l2: Option<f64>,
    /// Largest absolute difference.
    pub(crate) max_abs: Option<f64>,
}

/// One compared tensor and its verdict.
#[derive(Debug, Clone)]
pub(crate) struct TensorCheck {
    pub(crate) name: String,
    pub(crate) rel_l2: f64,
    pub(crate) max_abs: f64,
    pub(crate) tolerance: Tolerance,
}

impl TensorCheck {
    pub(crate) fn passed(&self) -> bool {
        // NaN compares false: a NaN error fails.
        let rel_ok = self.tolerance.rel_l2.is_none_or(|tol| self.rel_l2 <= tol);
        let abs_ok = self.tolerance.max_abs.is_none_or(|tol| self.max_abs <= tol);
        rel_ok && abs_ok && self.rel_l2.is_finite() && self.max_abs.is_finite()
    }

    /// Compares `actual` with `expected` (same shape required).
    pub(crate) fn new(name: &str, actual: &Tensor, expected: &Tensor, tolerance: &Tolerance) -> anyhow::Result<Self> {
        if actual.dims() != expected.dims() {
            bail!("{name}: computed shape {:?}, expected {:?}", actual.dims(), expected.dims());
        }
        let actual = to_f64_vec(actual)?;
        let expected = to_f64_vec(expected)?;
        Ok(Self::from_values(name, &actual, &expected, tolerance))
    }

    pub(crate) fn from_values(name: &str, actual: &[f64], expected: &[f64], tolerance: &Tolerance) -> Self {
        let mut diff_sq = 0.0;
        let mut ref_sq = 0.0;
        let mut max_abs: f64 = 0.0;
        for (a, e) in actual.iter().zip(expected) {
            let d = a - e;
            diff_sq += d * d;
            ref_sq += e * e;
            max_abs = if d.is_nan() { f64::NAN } else { max_abs.max(d.abs()) };
        }
        let rel_l2 = if ref_sq > 0.0 { (diff_sq / ref_sq).sqrt() } else { diff_sq.sqrt() };
        Self { name: name.to_owned(), rel_l2, max_abs, tolerance: tolerance.clone() }
    }
}

fn to_f64_vec(tensor: &Tensor) -> anyhow::Result<Vec<f64>> {
    Ok(tensor.to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?)
}

impl fmt::Display for TensorCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.passed() { "ok  " } else { "FAIL" };
        write!(f, "{mark} {:<60} rel_l2 {:.3e}", self.name, self.rel_l2)?;
        if let Some(tol) = self.tolerance.rel_l2 {
            write!(f, " (tol {tol:.0e})")?;
        }
        write!(f, "  max_abs {:.3e}", self.max_abs)?;
        if let Some(tol) = self.tolerance.max_abs {
            write!(f, " (tol {tol:.0e})")?;
        }
        Ok(())
    }
}
