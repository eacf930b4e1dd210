//! Each op inside `with_autocast(bf16 | f16)`: its output and its gradients (to the input and
//! to every f32 parameter) stay within half precision's rounding of the f32 op's, on the CPU
//! custom ops and on the device-generic path; convolutions and products return the half dtype,
//! LayerNorm returns f32 (as PyTorch's autocast does), parameter gradients arrive in f32.

use crate::common;

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use common::values;
use dmlp_nn::{
    AvgPool2d, Conv2dConfig, MaxPool2d, ParamStore, batch_norm, batched_vecmat, conv2d, generated_projection,
    global_avg_pool, init, layer_norm, linear, with_autocast, with_generic_ops,
};

fn rel_l2(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt();
    diff / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(1e-30)
}

/// A continuous pseudo-random tensor (no ties, unlike a modulo pattern).
fn smooth(shape: &[usize], seed: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> =
        (0..n).map(|i| (((i as f64 + seed) * 12.9898).sin() * 43758.5453).fract() as f32 * 2.0).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// The output, its dtype, and the gradients of `Σ out·r` for the input and every parameter.
type Run = (Vec<f64>, DType, Vec<(String, Vec<f64>, DType)>);

/// Runs `op` on input `x` under `autocast` (and the generic path if asked).
fn run(
    x: &Var,
    store: &ParamStore,
    op: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    autocast: Option<DType>,
    generic: bool,
) -> Run {
    let forward = || with_autocast(autocast, || op(x.as_tensor()).unwrap());
    let out = if generic { with_generic_ops(forward) } else { forward() };
    let r = smooth(out.dims(), 0.5);
    let loss = (out.to_dtype(DType::F32).unwrap() * r).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let mut gs = vec![];
    let g = grads.get(x.as_tensor()).expect("input gradient");
    gs.push(("input".to_string(), values(g), g.dtype()));
    for (name, var) in store.trainable_vars() {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: no gradient"));
        gs.push((name, values(g), g.dtype()));
    }
    (values(&out), out.dtype(), gs)
}

/// Every half dtype and path against f32: rel_l2 within `bf16_tol` (bf16) or an eighth of it
/// (f16, three more mantissa bits); the output's dtype is `half` or, if `f32_out`, f32.
fn check(
    name: &str,
    x_shape: &[usize],
    store: &ParamStore,
    op: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
    f32_out: bool,
) {
    let x = Var::from_tensor(&smooth(x_shape, 0.0)).unwrap();
    let (out32, _, grads32) = run(&x, store, op, None, false);
    for half in [DType::BF16, DType::F16] {
        let tol = if half == DType::BF16 { 1.2e-2 } else { 1.5e-3 };
        for generic in [false, true] {
            let what = format!("{name} {half:?} {}", if generic { "generic" } else { "CPU" });
            let (out, dtype, grads) = run(&x, store, op, Some(half), generic);
            assert_eq!(dtype, if f32_out { DType::F32 } else { half }, "{what}: output dtype");
            let err = rel_l2(&out, &out32);
            assert!(err < tol, "{what}: output rel_l2 {err:.2e}");
            for ((gname, g, gdtype), (_, g32, _)) in grads.iter().zip(&grads32) {
                if gname != "input" {
                    assert_eq!(*gdtype, DType::F32, "{what}: {gname} gradient dtype");
                }
                let err = rel_l2(g, g32);
                assert!(err < tol, "{what}: {gname} gradient rel_l2 {err:.2e}");
            }
        }
    }
}

#[test]
fn convolutions_compute_in_half_precision() {
    let store = ParamStore::new(3);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let strided = conv2d(6, 8, 3, Conv2dConfig::new(2, 1), true, init::pytorch_default(54), vb.pp("a")).unwrap();
    let grouped = Conv2dConfig { groups: 2, ..Conv2dConfig::new(1, 1) };
    let grouped = conv2d(8, 8, 3, grouped, false, init::pytorch_default(36), vb.pp("b")).unwrap();
    check("conv2d", &[4, 6, 15, 12], &store, &|x| grouped.forward(&strided.forward(x)?), false);
}

#[test]
fn products_compute_in_half_precision() {
    let store = ParamStore::new(4);
    let fc = linear(24, 12, true, store.var_builder(DType::F32, &Device::Cpu).pp("fc")).unwrap();
    check("linear", &[6, 24], &store, &|x| fc.forward(x), false);
    let store = ParamStore::new(4);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let fc = linear(24, 12, true, vb.pp("fc")).unwrap();
    let generator = linear(12, 8 * 5, true, vb.pp("gen")).unwrap();
    check(
        "generated projection",
        &[6, 24],
        &store,
        &|x| {
            let h = fc.forward(x)?;
            generated_projection(&x.narrow(1, 0, 8)?, &h, &generator, (8, 5))
        },
        false,
    );
    check(
        "batched vecmat",
        &[6, 24],
        &ParamStore::new(5),
        &|x| batched_vecmat(&x.narrow(1, 0, 4)?, &x.narrow(1, 4, 20)?),
        false,
    );
}

#[test]
fn normalisation_computes_in_f32() {
    // Its input arrives in half precision from a convolution.
    let half_input = |x: &Tensor| x.to_dtype(dmlp_nn::autocast_dtype().unwrap_or(DType::F32));
    let store = ParamStore::new(6);
    let vb = store.var_builder(DType::F32, &Device::Cpu);
    let bn = batch_norm(5, vb.pp("bn")).unwrap();
    check("batch norm (training)", &[4, 5, 7, 6], &store, &|x| bn.forward_t(&half_input(x)?, true), false);
    check("batch norm + relu (training)", &[4, 5, 7, 6], &store, &|x| bn.forward_relu_t(&half_input(x)?, true), false);
    check("batch norm (evaluation)", &[4, 5, 7, 6], &store, &|x| bn.forward_t(&half_input(x)?, false), false);
    let store = ParamStore::new(7);
    let ln = layer_norm(16, store.var_builder(DType::F32, &Device::Cpu).pp("ln")).unwrap();
    // It returns f32 under autocast.
    check("layer norm", &[6, 16], &store, &|x| ln.forward(&half_input(x)?), true);
}

#[test]
fn pooling_keeps_the_dtype_it_gets() {
    let none = ParamStore::new(8);
    let half_input = |x: &Tensor| x.to_dtype(dmlp_nn::autocast_dtype().unwrap_or(DType::F32));
    let avg = AvgPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: true, count_include_pad: false };
    check("avg pool", &[2, 3, 9, 8], &none, &|x| avg.forward(&half_input(x)?), false);
    check("global avg pool", &[2, 3, 9, 8], &none, &|x| global_avg_pool(&half_input(x)?), false);
    // Max pooling's values are exact in any dtype, but rounding can tie two inputs of a window
    // and route its gradient elsewhere: values only.
    let max = MaxPool2d { kernel: 3, stride: 2, padding: 1, ceil_mode: false };
    for half in [DType::BF16, DType::F16] {
        let x = smooth(&[2, 3, 9, 8], 0.0);
        let exact = values(&max.forward(&x.to_dtype(half).unwrap().to_dtype(DType::F32).unwrap()).unwrap());
        let got = with_autocast(Some(half), || max.forward(&half_input(&x).unwrap()).unwrap());
        assert_eq!(got.dtype(), half);
        assert_eq!(values(&got), exact, "max pool {half:?}");
    }
}
