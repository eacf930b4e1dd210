//! Multi-head attention's core, `softmax(q·kᵀ·scale + bias)·v` for every head, as one CPU op.
//!
//! Composed from tensor ops, a Swin block's attention is a dozen graph nodes over activations and
//! score tensors (head transposes and their copies, the scaling, the bias and mask, the softmax,
//! two products, the transpose back), and candle's backward zero-fills and adds a gradient the
//! size of each. Here it is one node: heads are read from and written to `[G, N, C]` rows through
//! strides (no transposes), the scaling rides on the product, the bias is written first and the
//! product added to it, the softmax runs in place. The backward recomputes the probabilities
//! (one product per head, cheaper than keeping them) and gives `dq`, `dk`, `dv` and the bias's
//! gradient in one pass. Work is split over the `G` items (windows × images).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, WithDType, bail};
use rayon::prelude::*;

use crate::attention_ops::Real;
use crate::cpu::{contiguous, dispatch_float, with_cpu_slice};
use crate::gemm_util::{matmul_serial, matmul_serial_scaled};

/// Sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    /// Items (windows × images, or images).
    g: usize,
    /// Queries and keys per item.
    n: usize,
    m: usize,
    /// Width `C = heads · d`.
    c: usize,
    heads: usize,
    /// Items the bias repeats over (`g % bias_items` picks an item's bias); 0 without a bias.
    bias_items: usize,
}

impl Sizes {
    fn d(&self) -> usize {
        self.c / self.heads
    }

    fn check(heads: usize, q: &[usize], kv: &[usize], bias: Option<&[usize]>) -> Result<Self> {
        let (&[g, n, c], &[g2, m, c2]) = (q, kv) else {
            bail!("attention: q {q:?} and kv {kv:?} must be [G, N, C] and [G, M, 2C]")
        };
        if g != g2 || c2 != 2 * c || heads == 0 || !c.is_multiple_of(heads) || m == 0 {
            bail!("attention: q {q:?}, kv {kv:?} and {heads} heads do not fit")
        }
        let bias_items = match bias {
            None => 0,
            Some(&[gb, h, bn, bm]) if gb > 0 && g.is_multiple_of(gb) && h == heads && bn == n && bm == m => gb,
            Some(other) => bail!("attention: bias {other:?} does not fit [G' | {g}, {heads}, {n}, {m}]"),
        };
        Ok(Self { g, n, m, c, heads, bias_items })
    }
}

/// `S = bias + scale · q_h · k_hᵀ` for head `h` of one item, softmaxed in place into `p [n × m]`.
fn probabilities<T: Real>(s: &Sizes, h: usize, q: &[T], kv: &[T], bias: Option<&[T]>, scale: T, p: &mut [T]) {
    let (n, m, c, d) = (s.n, s.m, s.c, s.d());
    match bias {
        Some(bias) => p.copy_from_slice(&bias[h * n * m..][..n * m]),
        None => p.fill(T::ZERO),
    }
    // kᵀ [d × m]: element (i, j) = kv[j·2c + h·d + i].
    matmul_serial_scaled((n, m, d), (p, m, 1), true, (&q[h * d..], c, 1), (&kv[h * d..], 1, 2 * c), scale);
    for row in p.chunks_mut(m) {
        let max = row.iter().copied().fold(T::NEG_INFINITY, Real::max);
        T::exp_shifted(row, max);
        let sum = row.iter().fold(T::ZERO, |acc, &e| acc + e);
        let inv = sum.recip();
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

fn forward<T: Real>(s: &Sizes, q: &[T], kv: &[T], bias: Option<&[T]>, scale: T) -> Vec<T> {
    let (n, m, c, d) = (s.n, s.m, s.c, s.d());
    let mut out = vec![T::ZERO; s.g * n * c];
    out.par_chunks_mut(n * c).enumerate().for_each(|(item, out)| {
        let (q, kv) = (&q[item * n * c..][..n * c], &kv[item * m * 2 * c..][..m * 2 * c]);
        let bias = bias.map(|b| &b[(item % s.bias_items) * s.heads * n * m..][..s.heads * n * m]);
        let mut p = vec![T::ZERO; n * m];
        for h in 0..s.heads {
            probabilities(s, h, q, kv, bias, scale, &mut p);
            // out_h [n × d] (row stride c) = p · v_h, v_h [m × d] at column c + h·d of kv.
            matmul_serial((n, d, m), (&mut out[h * d..], c, 1), false, (&p, m, 1), (&kv[c + h * d..], 2 * c, 1));
        }
    });
    out
}

/// `(dq [G, N, C], dkv [G, M, 2C], dbias per item [G, heads, N, M] when there is a bias)`.
fn backward<T: Real>(
    s: &Sizes,
    q: &[T],
    kv: &[T],
    bias: Option<&[T]>,
    scale: T,
    dout: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let (n, m, c, d, heads) = (s.n, s.m, s.c, s.d(), s.heads);
    let mut dq = vec![T::ZERO; s.g * n * c];
    let mut dkv = vec![T::ZERO; s.g * m * 2 * c];
    let mut dbias = vec![T::ZERO; if bias.is_some() { s.g * heads * n * m } else { 0 }];
    let per_item_bias = if bias.is_some() { heads * n * m } else { 0 };
    let items = dq.par_chunks_mut(n * c).zip(dkv.par_chunks_mut(m * 2 * c));
    let with_bias: Vec<&mut [T]> =
        if per_item_bias > 0 { dbias.chunks_mut(per_item_bias).collect() } else { Vec::new() };
    let mut bias_slots: Vec<Option<&mut [T]>> = with_bias.into_iter().map(Some).collect();
    bias_slots.resize_with(s.g, || None);
    items.zip(bias_slots.into_par_iter()).enumerate().for_each(|(item, ((dq, dkv), mut dbias))| {
        let (q, kv) = (&q[item * n * c..][..n * c], &kv[item * m * 2 * c..][..m * 2 * c]);
        let dout = &dout[item * n * c..][..n * c];
        let bias = bias.map(|b| &b[(item % s.bias_items) * heads * n * m..][..heads * n * m]);
        let (mut p, mut dp) = (vec![T::ZERO; n * m], vec![T::ZERO; n * m]);
        for h in 0..heads {
            probabilities(s, h, q, kv, bias, scale, &mut p);
            // dP = dO_h · v_hᵀ: vᵀ [d × m], element (i, j) = kv[j·2c + c + h·d + i].
            matmul_serial((n, m, d), (&mut dp, m, 1), false, (&dout[h * d..], c, 1), (&kv[c + h * d..], 1, 2 * c));
            // dv_h = Pᵀ · dO_h into kv's v columns.
            matmul_serial((m, d, n), (&mut dkv[c + h * d..], 2 * c, 1), false, (&p, 1, m), (&dout[h * d..], c, 1));
            // dS = P ⊙ (dP − Σ_row dP ⊙ P), in place in dp.
            for (ds, pr) in dp.chunks_mut(m).zip(p.chunks(m)) {
                let dot = ds.iter().zip(pr).fold(T::ZERO, |acc, (&a, &b)| acc + a * b);
                for (v, &pv) in ds.iter_mut().zip(pr) {
                    *v = pv * (*v - dot);
                }
            }
            if let Some(dbias) = dbias.as_deref_mut() {
                dbias[h * n * m..][..n * m].copy_from_slice(&dp);
            }
            // dq_h = scale · dS · k_h; dk_h = scale · dSᵀ · q_h.
            matmul_serial_scaled(
                (n, d, m),
                (&mut dq[h * d..], c, 1),
                false,
                (&dp, m, 1),
                (&kv[h * d..], 2 * c, 1),
                scale,
            );
            matmul_serial_scaled(
                (m, d, n),
                (&mut dkv[h * d..], 2 * c, 1),
                false,
                (&dp, 1, m),
                (&q[h * d..], c, 1),
                scale,
            );
        }
    });
    (dq, dkv, dbias)
}

/// Sums per-item bias gradients `[G, heads·N·M]` into the bias's `[G', heads·N·M]` (item `g`
/// into `g % G'`), in parallel over each bias item's entries.
fn reduce_bias<T: Real>(per_item: &[T], items: usize, bias_items: usize, len: usize) -> Vec<T> {
    const CHUNK: usize = 4096;
    let mut out = vec![T::ZERO; bias_items * len];
    for (slot, dst) in out.chunks_mut(len).enumerate() {
        dst.par_chunks_mut(CHUNK).enumerate().for_each(|(chunk, dst)| {
            for item in (slot..items).step_by(bias_items) {
                let src = &per_item[item * len + chunk * CHUNK..][..dst.len()];
                for (v, &add) in dst.iter_mut().zip(src) {
                    *v += add;
                }
            }
        });
    }
    out
}

/// The op: `(q, kv)` or `(q, kv, bias)`.
#[derive(Debug, Clone, Copy)]
struct Mha {
    heads: usize,
    scale: f64,
}

struct MhaOp(Mha);
struct MhaBiasOp(Mha);

fn run_forward(op: &Mha, name: &str, inputs: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
    let (q, kv) = (inputs[0], inputs[1]);
    let bias = inputs.get(2);
    let sizes = Sizes::check(op.heads, q.1.dims(), kv.1.dims(), bias.map(|b| b.1.dims()))?;
    let out = dispatch_float!(q.0, name, |T| {
        let bias = bias.map(|b| contiguous::<T>(b.0, b.1, name)).transpose()?;
        T::to_cpu_storage_owned(forward(
            &sizes,
            contiguous::<T>(q.0, q.1, name)?,
            contiguous::<T>(kv.0, kv.1, name)?,
            bias,
            T::from_f64(op.scale),
        ))
    });
    Ok((out, Shape::from((sizes.g, sizes.n, sizes.c))))
}

/// `(dq, dkv, dbias)` as tensors on the CPU.
fn run_backward(
    op: &Mha,
    q: &Tensor,
    kv: &Tensor,
    bias: Option<&Tensor>,
    grad: &Tensor,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let sizes = Sizes::check(op.heads, q.dims(), kv.dims(), bias.map(Tensor::dims))?;
    let dev = q.device();
    macro_rules! typed {
        ($t:ty) => {{
            with_cpu_slice::<$t, _>(q, |q_s| {
                with_cpu_slice::<$t, _>(kv, |kv_s| {
                    with_cpu_slice::<$t, _>(grad, |g_s| {
                        let run = |b_s: Option<&[$t]>| backward(&sizes, q_s, kv_s, b_s, op.scale as $t, g_s);
                        let (dq, dkv, dbias) = match bias {
                            Some(b) => with_cpu_slice::<$t, _>(b, |b_s| Ok(run(Some(b_s))))?,
                            None => run(None),
                        };
                        let dq = Tensor::from_vec(dq, q.shape(), dev)?;
                        let dkv = Tensor::from_vec(dkv, kv.shape(), dev)?;
                        let dbias = match bias {
                            Some(b) => {
                                let len = sizes.heads * sizes.n * sizes.m;
                                let reduced = reduce_bias(&dbias, sizes.g, sizes.bias_items, len);
                                Some(Tensor::from_vec(reduced, b.shape(), dev)?)
                            }
                            None => None,
                        };
                        Ok((dq, dkv, dbias))
                    })
                })
            })
        }};
    }
    match q.dtype() {
        candle_core::DType::F32 => typed!(f32),
        candle_core::DType::F64 => typed!(f64),
        other => bail!("attention's CPU op supports f32 and f64, got {other:?}"),
    }
}

impl CustomOp2 for MhaOp {
    fn name(&self) -> &'static str {
        "dmlp-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        run_forward(&self.0, self.name(), &[(s1, l1), (s2, l2)])
    }

    fn bwd(&self, q: &Tensor, kv: &Tensor, _out: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dq, dkv, _) = run_backward(&self.0, q, kv, None, grad)?;
        Ok((Some(dq), Some(dkv)))
    }
}

impl CustomOp3 for MhaBiasOp {
    fn name(&self) -> &'static str {
        "dmlp-attention-bias"
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
        run_forward(&self.0, self.name(), &[(s1, l1), (s2, l2), (s3, l3)])
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        _out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dq, dkv, dbias) = run_backward(&self.0, q, kv, Some(bias), grad)?;
        Ok((Some(dq), Some(dkv), dbias))
    }
}

/// Multi-head attention's core: for every item `g` and head `h`,
/// `out_h = softmax(q_h·k_hᵀ·scale + bias[g mod G'][h])·v_h`, where head `h` is columns
/// `h·d .. (h+1)·d` of `q` and of the two halves of `kv` (`k`, then `v`), `d = C / heads`. On
/// the CPU one op (see the module's docs), elsewhere composed from tensor ops; half precision
/// computes in f32 (the softmax in f32 as PyTorch's autocast does) and returns its dtype.
///
/// # Shapes
/// `q: [G, N, C]`, `kv: [G, M, 2C]`, `bias: [G', heads, N, M]` with `G' | G` → `[G, N, C]`.
pub fn multi_head_attention(
    q: &Tensor,
    kv: &Tensor,
    bias: Option<&Tensor>,
    heads: usize,
    scale: f64,
) -> Result<Tensor> {
    let sizes = Sizes::check(heads, q.dims(), kv.dims(), bias.map(Tensor::dims))?;
    let dtype = q.dtype();
    if crate::cpu::custom_cpu_ops(q.device()) {
        let compute = crate::accumulation_dtype(q);
        let (q, kv) = (q.to_dtype(compute)?.contiguous()?, kv.to_dtype(compute)?.contiguous()?);
        let op = Mha { heads, scale };
        let out = match bias {
            Some(bias) => q.apply_op3(&kv, &bias.to_dtype(compute)?.contiguous()?, MhaBiasOp(op))?,
            None => q.apply_op2(&kv, MhaOp(op))?,
        };
        return out.to_dtype(dtype);
    }
    attention_composed(q, kv, bias, &sizes, scale)
}

/// Any device: the same from tensor ops.
fn attention_composed(q: &Tensor, kv: &Tensor, bias: Option<&Tensor>, s: &Sizes, scale: f64) -> Result<Tensor> {
    let (g, n, m, heads, d) = (s.g, s.n, s.m, s.heads, s.d());
    let q = q.reshape((g, n, heads, d))?.transpose(1, 2)?;
    let kv = kv.reshape((g, m, 2, heads, d))?;
    let k = kv.narrow(2, 0, 1)?.squeeze(2)?.transpose(1, 2)?;
    let v = kv.narrow(2, 1, 1)?.squeeze(2)?.transpose(1, 2)?;
    let scores = crate::matmul_nt(&(q * scale)?, &k)?;
    let scores = match bias {
        Some(bias) => {
            let gb = bias.dim(0)?;
            scores
                .reshape((g / gb, gb, heads, n, m))?
                .broadcast_add(&bias.to_dtype(scores.dtype())?.unsqueeze(0)?)?
                .reshape((g, heads, n, m))?
        }
        None => scores,
    };
    let weights = crate::softmax_last_dim(&scores)?;
    let out = crate::matmul(&weights.to_dtype(v.dtype())?, &v)?;
    out.transpose(1, 2)?.reshape((g, n, heads * d))
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;

    use crate::test_util::{close, values};

    /// The op against the composed path, values and every gradient: with a bias repeating over
    /// items (Swin's shifted windows), with one shared bias, and without (PVT's reduced keys).
    #[test]
    fn matches_the_composed_path_with_gradients() {
        let dev = Device::Cpu;
        for (g, n, m, heads, bias_items) in [(6, 5, 5, 2, Some(3)), (4, 7, 7, 3, Some(1)), (3, 9, 4, 2, None)] {
            let c = heads * 4;
            let q = Var::from_tensor(&Tensor::randn(0f64, 1.0, (g, n, c), &dev).unwrap()).unwrap();
            let kv = Var::from_tensor(&Tensor::randn(0f64, 1.0, (g, m, 2 * c), &dev).unwrap()).unwrap();
            let bias = bias_items
                .map(|gb| Var::from_tensor(&Tensor::randn(0f64, 1.0, (gb, heads, n, m), &dev).unwrap()).unwrap());
            let mix = Tensor::randn(0f64, 1.0, (g, n, c), &dev).unwrap();
            let b = bias.as_ref().map(|b| b.as_tensor());
            let ours = multi_head_attention(q.as_tensor(), kv.as_tensor(), b, heads, 0.37).unwrap();
            let theirs = crate::with_generic_ops(|| {
                multi_head_attention(q.as_tensor(), kv.as_tensor(), b, heads, 0.37).unwrap()
            });
            let case = format!("g {g} n {n} m {m} heads {heads} bias {bias_items:?}");
            close(&case, &values(&ours), &values(&theirs), 1e-12);
            let ga = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
            let mut watched = vec![("dq", q.as_tensor()), ("dkv", kv.as_tensor())];
            if let Some(bias) = &bias {
                watched.push(("dbias", bias.as_tensor()));
            }
            for (name, t) in watched {
                close(&format!("{case} {name}"), &values(ga.get(t).unwrap()), &values(gb.get(t).unwrap()), 1e-11);
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((4, 5, 8), DType::F32, &dev).unwrap();
        let kv = Tensor::zeros((4, 6, 16), DType::F32, &dev).unwrap();
        assert!(multi_head_attention(&q, &kv, None, 3, 1.0).is_err(), "8 wide, 3 heads");
        let bad_bias = Tensor::zeros((3, 2, 5, 6), DType::F32, &dev).unwrap();
        assert!(multi_head_attention(&q, &kv, Some(&bad_bias), 2, 1.0).is_err(), "3 does not divide 4 items");
        assert!(multi_head_attention(&q, &q, None, 2, 1.0).is_err(), "kv must be 2C wide");
    }
}
