//! Fully connected layers with PyTorch's initialisation.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::init::pytorch_default;
use crate::linear_op::{LinearBiasOp, LinearOp};

/// `y = x·Wᵀ + b` with `W: [out, in]` (key `weight`) and an optional `b: [out]` (key `bias`).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

/// `nn.Linear(in_features, out_features, bias)` under `vb`, initialised as PyTorch does.
pub fn linear(in_features: usize, out_features: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let init = pytorch_default(in_features);
    let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
    let bias = if bias { Some(vb.get_with_hints(out_features, "bias", init)?) } else { None };
    Ok(Linear { weight, bias })
}

/// `nn.Linear` with a chosen weight initialisation and a zero bias: the transformers' layout
/// (timm's `trunc_normal_(std=0.02)` and `constant_(bias, 0)`).
pub fn linear_with_init(
    in_features: usize,
    out_features: usize,
    bias: bool,
    init: candle_nn::Init,
    vb: VarBuilder,
) -> Result<Linear> {
    let weight = vb.get_with_hints((out_features, in_features), "weight", init)?;
    let bias = if bias { Some(vb.get_with_hints(out_features, "bias", candle_nn::Init::Const(0.0))?) } else { None };
    Ok(Linear { weight, bias })
}

impl Linear {
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    /// # Shapes
    /// `xs: [..., in]` → `[..., out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        linear_nd(xs, &self.weight, self.bias.as_ref())
    }
}

/// `x·Wᵀ + b` over the last dimension of `x: [..., in]` → `[..., out]`.
pub fn linear_nd(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let dims = xs.dims();
    let Some((&in_features, leading)) = dims.split_last() else {
        candle_core::bail!("linear expects at least one dimension, got a scalar")
    };
    if crate::cpu::custom_cpu_ops(xs.device()) {
        // The CPU op takes the leading dimensions as rows: no reshapes, whose backward would
        // zero-fill and add a gradient the size of the activation each.
        return linear_forward(xs, weight, bias);
    }
    let rows: usize = leading.iter().product();
    let flat = xs.reshape((rows, in_features))?;
    let ys = linear_forward(&flat, weight, bias)?;
    let mut out_dims = leading.to_vec();
    out_dims.push(weight.dim(0)?);
    ys.reshape(out_dims)
}

/// `x·Wᵀ + b` for `x: [B, in]` (on the CPU any `[..., in]`): on the CPU the project's op (direct gemm calls, bias folded
/// into the product; half precision through f32), elsewhere candle's matmul. Inside
/// [`crate::with_autocast`] it computes in, and returns, the autocast dtype.
pub fn linear_forward(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (xs, weight) = (&crate::autocast::for_matmul(xs)?, &crate::autocast::for_matmul(weight)?);
    if !crate::cpu::custom_cpu_ops(xs.device()) {
        let ys = xs.matmul(&weight.t()?)?;
        return match bias {
            Some(bias) => ys.broadcast_add(&bias.to_dtype(ys.dtype())?),
            None => Ok(ys),
        };
    }
    // candle has no CPU matmul for bf16: half precision computes in f32 and rounds back.
    let dtype = xs.dtype();
    let compute = if matches!(dtype, DType::F32 | DType::F64) { dtype } else { DType::F32 };
    let xs = xs.to_dtype(compute)?.contiguous()?;
    let weight = weight.to_dtype(compute)?.contiguous()?;
    let ys = match bias {
        Some(bias) => xs.apply_op3(&weight, &bias.to_dtype(compute)?.contiguous()?, LinearBiasOp)?,
        None => xs.apply_op2(&weight, LinearOp)?,
    };
    ys.to_dtype(dtype)
}

/// `a · b` over matching batch dimensions (`[..., M, K] · [..., K, N]` → `[..., M, N]`), the
/// attention products of the transformers. On the CPU the project's batched op (the batch split
/// over threads, each small product whole on one); inside [`crate::with_autocast`] it computes
/// in the autocast dtype, on the CPU through f32 (candle has no half-precision CPU matmul).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    batched_product(a, b, false)
}

/// `a · bᵀ` over matching batch dimensions (`[..., M, K] · [..., N, K]ᵀ` → `[..., M, N]`):
/// attention's `q · kᵀ`, reading `k` through strides instead of copying it transposed.
pub fn matmul_nt(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    batched_product(a, b, true)
}

fn batched_product(a: &Tensor, b: &Tensor, transpose_b: bool) -> Result<Tensor> {
    let (a, b) = (crate::autocast::for_matmul(a)?, crate::autocast::for_matmul(b)?);
    let (a_dims, b_dims) = (a.dims(), b.dims());
    let rank = a_dims.len();
    if rank < 2 || b_dims.len() != rank || a_dims[..rank - 2] != b_dims[..rank - 2] {
        candle_core::bail!("matmul: {a_dims:?} · {b_dims:?} do not share their batch dimensions")
    }
    let (m, k) = (a_dims[rank - 2], a_dims[rank - 1]);
    let (n, k2) = if transpose_b { (b_dims[rank - 2], b_dims[rank - 1]) } else { (b_dims[rank - 1], b_dims[rank - 2]) };
    if k != k2 {
        candle_core::bail!("matmul: {a_dims:?} · {b_dims:?}{} do not fit", if transpose_b { "ᵀ" } else { "" })
    }
    let batch: usize = a_dims[..rank - 2].iter().product();
    let mut out_dims = a_dims[..rank - 1].to_vec();
    out_dims.push(n);
    // One batch dimension: candle checks the batch strides of rank > 3 products dimension by
    // dimension and refuses some contiguous layouts (a batch dimension of 1).
    let a = a.contiguous()?.reshape((batch, m, k))?;
    let b = b.contiguous()?.reshape((batch, b_dims[rank - 2], b_dims[rank - 1]))?;
    let dtype = a.dtype();
    let product = if crate::cpu::custom_cpu_ops(a.device()) {
        let compute = if matches!(dtype, DType::F32 | DType::F64) { dtype } else { DType::F32 };
        let op = crate::bmm_op::BmmOp { transpose_a: false, transpose_b };
        a.to_dtype(compute)?.apply_op2(&b.to_dtype(compute)?, op)?.to_dtype(dtype)?
    } else if transpose_b {
        a.matmul(&b.transpose(1, 2)?.contiguous()?)?
    } else {
        a.matmul(&b)?
    };
    product.reshape(out_dims)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Module, Tensor, Var};

    use crate::ParamStore;

    fn values(t: &Tensor) -> Vec<f64> {
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn fused_linear_matches_the_matmul_path_with_gradients() {
        for bias in [true, false] {
            for (rows, inp, out) in [(5, 7, 3), (1, 4, 9), (33, 17, 65)] {
                let store = ParamStore::new(4);
                let layer = super::linear(inp, out, bias, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
                let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (rows, inp), &Device::Cpu).unwrap()).unwrap();
                let mix = Tensor::randn(0f64, 1.0, (rows, out), &Device::Cpu).unwrap();
                let ours = layer.forward(x.as_tensor()).unwrap();
                let mut reference = x.as_tensor().matmul(&layer.weight().t().unwrap()).unwrap();
                if let Some(b) = layer.bias() {
                    reference = reference.broadcast_add(b).unwrap();
                }
                let (a, b) = (values(&ours), values(&reference));
                assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-12));
                let ga = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
                let gb = (reference * &mix).unwrap().sum_all().unwrap().backward().unwrap();
                let mut watched = vec![x.as_tensor().clone(), layer.weight().clone()];
                watched.extend(layer.bias().cloned());
                for t in watched {
                    let (a, b) = (values(ga.get(&t).unwrap()), values(gb.get(&t).unwrap()));
                    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-10), "{a:?} vs {b:?}");
                }
            }
        }
    }

    #[test]
    fn leading_dimensions_are_kept() {
        let store = ParamStore::new(1);
        let layer = super::linear(4, 3, true, store.var_builder(DType::F32, &Device::Cpu)).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 5, 4), &Device::Cpu).unwrap();
        assert_eq!(layer.forward(&x).unwrap().dims(), [2, 5, 3]);
    }
}
