//! Fully connected layers on the CPU as direct gemm calls, forward and backward.
//!
//! `y = x·Wᵀ + b` with the bias written into the destination before the product (one pass
//! instead of a product and a broadcast add), and a backward of two products and a column sum:
//!
//! ```text
//! dx = dy · W      [B × O] · [O × I]
//! dW = dyᵀ · x     [O × B] · [B × I]   (the transpose is a stride, not a copy)
//! db = Σ_b dy
//! ```

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType, bail};

use crate::cpu::{contiguous, dispatch_float};
use crate::gemm_util::matmul;

/// `(rows, last)` of a `[..., last]` tensor: its leading dimensions are rows.
fn rows_last(dims: &[usize], what: &str) -> Result<(usize, usize)> {
    match dims.split_last() {
        Some((&last, leading)) => Ok((leading.iter().product(), last)),
        None => bail!("linear: {what} is a scalar"),
    }
}

/// `dims` with the last dimension replaced by `last`.
fn with_last(dims: &[usize], last: usize) -> Shape {
    let mut out = dims.to_vec();
    if let Some(end) = out.last_mut() {
        *end = last;
    }
    Shape::from(out)
}

/// `(rows, in)` of `x [..., in]` and `(out, in)` of `W`, checked against each other.
fn dims(x: &Layout, w: &Layout) -> Result<(usize, usize, usize)> {
    let (rows, in_x) = rows_last(x.dims(), "x")?;
    let &[out, in_w] = w.dims() else { bail!("linear expects W [out, in], got {:?}", w.dims()) };
    if in_x != in_w {
        bail!("linear: x has {in_x} features, W expects {in_w}")
    }
    Ok((rows, in_x, out))
}

fn forward<T: WithDType>(x: &[T], w: &[T], bias: Option<&[T]>, (rows, inp, out): (usize, usize, usize)) -> Vec<T> {
    let mut y = vec![T::zero(); rows * out];
    if let Some(bias) = bias {
        for row in y.chunks_exact_mut(out) {
            row.copy_from_slice(bias);
        }
    }
    // Wᵀ as the right operand: element (i, o) lives at W[o·in + i].
    matmul((rows, out, inp), &mut y, out, bias.is_some(), (x, inp, 1), (w, 1, inp));
    y
}

/// `(x [..., in], W [out, in], b [out]) → [..., out]` (leading dimensions are rows).
pub(crate) struct LinearBiasOp;

/// `(x [..., in], W [out, in]) → [..., out]`.
pub(crate) struct LinearOp;

impl CustomOp3 for LinearBiasOp {
    fn name(&self) -> &'static str {
        "dmlp-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = dims(l1, l2)?;
        if l3.dims() != [dims.2] {
            bail!("linear: bias {:?} does not fit {} outputs", l3.dims(), dims.2)
        }
        let y = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(forward(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            Some(contiguous::<T>(s3, l3, self.name())?),
            dims
        )));
        Ok((y, with_last(l1.dims(), dims.2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = backward(x, w, grad)?;
        let db = if grad.device().is_cpu() { grad.contiguous()?.apply_op1_no_bwd(&ColumnSumOp)? } else { grad.sum(0)? };
        Ok((dx, dw, Some(db)))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "dmlp-linear-no-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = dims(l1, l2)?;
        let y = dispatch_float!(s1, self.name(), |T| T::to_cpu_storage_owned(forward(
            contiguous::<T>(s1, l1, self.name())?,
            contiguous::<T>(s2, l2, self.name())?,
            None,
            dims
        )));
        Ok((y, with_last(l1.dims(), dims.2)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        backward(x, w, grad)
    }
}

/// `(dx, dW)`, each only where its tensor tracks a gradient (a first layer's input, a frozen
/// weight), as PyTorch's autograd skips them.
fn backward(x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let grad = grad.contiguous()?;
    let dx = x.track_op().then(|| grad.apply_op2_no_bwd(w, &InputGradOp)).transpose()?;
    let dw = w.track_op().then(|| grad.apply_op2_no_bwd(x, &WeightGradOp)).transpose()?;
    Ok((dx, dw))
}

/// `dy [..., out] → Σ_rows dy [out]`, row by row into one accumulator (candle's `sum(0)` reduces
/// each column with a strided walk, ten times slower on Dynamic MLP's [512, 16384] gradients).
struct ColumnSumOp;

impl candle_core::CustomOp1 for ColumnSumOp {
    fn name(&self) -> &'static str {
        "dmlp-linear-bias-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (_, out) = rows_last(l.dims(), "the bias gradient")?;
        let db = dispatch_float!(s, self.name(), |T| {
            let dy = contiguous::<T>(s, l, self.name())?;
            let mut db = vec![T::from_f64(0.0); out];
            for row in dy.chunks_exact(out.max(1)) {
                for (acc, v) in db.iter_mut().zip(row) {
                    *acc += *v;
                }
            }
            T::to_cpu_storage_owned(db)
        });
        Ok((db, Shape::from(out)))
    }
}

/// `(dy [..., out], W [out, in]) → dx = dy · W`, `[..., in]`.
struct InputGradOp;

impl CustomOp2 for InputGradOp {
    fn name(&self) -> &'static str {
        "dmlp-linear-input-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, out) = rows_last(l1.dims(), "the gradient")?;
        let &[out_w, inp] = l2.dims() else { bail!("linear input grad: W {:?}", l2.dims()) };
        if out != out_w {
            bail!("linear input grad: gradient {:?} does not fit W {:?}", l1.dims(), l2.dims())
        }
        let dx = dispatch_float!(s1, self.name(), |T| {
            let (dy, w) = (contiguous::<T>(s1, l1, self.name())?, contiguous::<T>(s2, l2, self.name())?);
            let mut dx = vec![T::from_f64(0.0); rows * inp];
            matmul((rows, inp, out), &mut dx, inp, false, (dy, out, 1), (w, inp, 1));
            T::to_cpu_storage_owned(dx)
        });
        Ok((dx, with_last(l1.dims(), inp)))
    }
}

/// `(dy [..., out], x [..., in]) → dW = dyᵀ · x` over all rows.
struct WeightGradOp;

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "dmlp-linear-weight-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let ((rows, out), (rows_x, inp)) = (rows_last(l1.dims(), "the gradient")?, rows_last(l2.dims(), "x")?);
        if rows != rows_x {
            bail!("linear weight grad: gradient {:?} does not fit x {:?}", l1.dims(), l2.dims())
        }
        let x_layout_ok = l2.is_contiguous();
        if !x_layout_ok {
            bail!("linear weight grad expects a contiguous input")
        }
        let dw = dispatch_float!(s1, self.name(), |T| {
            let (dy, x) = (contiguous::<T>(s1, l1, self.name())?, contiguous::<T>(s2, l2, self.name())?);
            let mut dw = vec![T::from_f64(0.0); out * inp];
            // dyᵀ as the left operand: element (o, b) lives at dy[b·out + o].
            matmul((out, inp, rows), &mut dw, inp, false, (dy, 1, out), (x, inp, 1));
            T::to_cpu_storage_owned(dw)
        });
        Ok((dw, Shape::from((out, inp))))
    }
}
