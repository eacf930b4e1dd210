//! The convolution op against candle's own convolution (forward and both gradients, which candle
//! computes correctly, only slowly) and against central finite differences in float64.

use crate::common;

use common::{assert_close, values};

use candle_core::{DType, Device, Tensor, Var};
use dmlp_nn::{Conv2dConfig, conv2d_forward};

/// (batch, in, out, h, w, kernel, stride, padding, dilation, groups)
type Case = (usize, usize, usize, usize, usize, usize, usize, usize, usize, usize);

const CASES: [Case; 22] = [
    (2, 3, 4, 9, 7, 3, 1, 1, 1, 1),       // 3×3 same padding, odd sizes
    (2, 3, 8, 17, 15, 7, 2, 3, 1, 1),     // ResNet stem shape, odd sizes
    (3, 8, 6, 6, 6, 1, 1, 0, 1, 1),       // pointwise: no im2col
    (2, 8, 6, 7, 9, 1, 2, 0, 1, 1),       // strided 1×1 downsample
    (2, 4, 4, 9, 9, 3, 1, 2, 2, 1),       // dilation 2
    (2, 4, 6, 8, 7, 3, 2, 1, 1, 2),       // groups 2, stride 2
    (1, 6, 6, 5, 5, 3, 1, 1, 1, 6),       // depthwise (its own op)
    (3, 16, 16, 7, 9, 3, 1, 1, 1, 16),    // depthwise as in PVT v2's MLPs, non-square
    (2, 5, 5, 8, 6, 5, 2, 2, 1, 5),       // depthwise 5×5, stride 2
    (2, 4, 4, 6, 7, 3, 1, 0, 1, 4),       // depthwise without padding
    (3, 2, 3, 24, 24, 3, 1, 1, 1, 1),     // several batch blocks (24² outputs)
    (40, 2, 3, 5, 5, 3, 1, 0, 1, 1),      // many images per block, 3² outputs
    (2, 3, 2, 4, 4, 4, 1, 0, 1, 1),       // kernel as large as the input
    (1, 2, 2, 5, 8, 3, 3, 1, 1, 1),       // stride 3, uneven
    (2, 3, 5, 6, 5, 2, 2, 1, 1, 1),       // even kernel with padding
    (5, 3, 4, 20, 20, 1, 1, 0, 1, 1),     // pointwise in batch blocks of 3 + 2 images (400-pixel maps)
    (4, 4, 6, 12, 12, 1, 1, 0, 1, 2),     // grouped pointwise, all four images in one block
    (7, 2, 3, 16, 16, 3, 1, 1, 1, 1),     // batch blocks of 4 + 3 images
    (2, 3, 4, 3, 2, 5, 1, 2, 1, 1),       // same-size 5×5 on a 3×2 map: taps wholly outside it
    (2, 2, 3, 2, 2, 5, 1, 2, 1, 1),       // same-size 5×5 on a 2×2 map: whole rows outside it
    (2, 64, 72, 15, 14, 3, 1, 1, 1, 1),   // 3×3 with 64+ channels on 14²+ maps: Winograd, odd side
    (1, 128, 128, 14, 16, 3, 1, 1, 1, 2), // Winograd in two groups of 64
];

#[test]
fn forward_and_gradients_match_candles_convolution() {
    for (dtype, tol) in [(DType::F64, 1e-12), (DType::F32, 1e-5)] {
        for (idx, &(b, c, o, h, w, k, s, p, d, g)) in CASES.iter().enumerate() {
            let case = format!("case {idx} {dtype:?}");
            let x = Var::from_tensor(
                &Tensor::randn(0f64, 1.0, (b, c, h, w), &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let wt = Var::from_tensor(
                &Tensor::randn(0f64, 1.0, (o, c / g, k, k), &Device::Cpu).unwrap().to_dtype(dtype).unwrap(),
            )
            .unwrap();
            let config = Conv2dConfig { stride: s, padding: p, dilation: d, groups: g };
            let ours = conv2d_forward(x.as_tensor(), wt.as_tensor(), config).unwrap();
            let theirs = x.as_tensor().conv2d(wt.as_tensor(), p, s, d, g).unwrap();
            assert_eq!(ours.dims(), theirs.dims(), "{case}");
            assert_close(&format!("{case} forward"), &values(&ours), &values(&theirs), tol);
            // A loss that weighs every output differently, so every gradient entry matters.
            let weights = Tensor::randn(0f64, 1.0, ours.dims(), &Device::Cpu).unwrap().to_dtype(dtype).unwrap();
            let ours_grads = (ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            // candle's backward fails when the stride does not divide (H + 2p − k): its transposed
            // convolution comes out one row short. Those cases are checked by finite differences.
            let Ok(theirs_grads) = (theirs * &weights).unwrap().sum_all().unwrap().backward() else {
                assert!((h + 2 * p - d * (k - 1) - 1) % s != 0 || (w + 2 * p - d * (k - 1) - 1) % s != 0, "{case}");
                if dtype == DType::F64 {
                    check_finite_differences(CASES[idx]);
                }
                continue;
            };
            for (name, var) in [("input", &x), ("weight", &wt)] {
                let a = values(ours_grads.get(var.as_tensor()).unwrap());
                let b = values(theirs_grads.get(var.as_tensor()).unwrap());
                assert_close(&format!("{case} {name} grad"), &a, &b, tol * 10.0);
            }
        }
    }
}

/// Every input and weight gradient entry against central differences, in float64.
fn check_finite_differences((b, c, o, h, w, k, s, p, d, g): Case) {
    let config = Conv2dConfig { stride: s, padding: p, dilation: d, groups: g };
    let x0 = values(&Tensor::randn(0f64, 1.0, (b, c, h, w), &Device::Cpu).unwrap());
    let w0 = values(&Tensor::randn(0f64, 1.0, (o, c / g, k, k), &Device::Cpu).unwrap());
    let x = Var::from_slice(&x0, (b, c, h, w), &Device::Cpu).unwrap();
    let wt = Var::from_slice(&w0, (o, c / g, k, k), &Device::Cpu).unwrap();
    let out = conv2d_forward(x.as_tensor(), wt.as_tensor(), config).unwrap();
    let mix = Tensor::randn(0f64, 1.0, out.dims(), &Device::Cpu).unwrap();
    let loss = |x: &[f64], wt: &[f64]| -> f64 {
        let x = Tensor::from_slice(x, (b, c, h, w), &Device::Cpu).unwrap();
        let wt = Tensor::from_slice(wt, (o, c / g, k, k), &Device::Cpu).unwrap();
        (conv2d_forward(&x, &wt, config).unwrap() * &mix).unwrap().sum_all().unwrap().to_scalar().unwrap()
    };
    let grads = (out * &mix).unwrap().sum_all().unwrap().backward().unwrap();
    let eps = 1e-6;
    for (name, var, base) in [("dx", &x, &x0), ("dw", &wt, &w0)] {
        let analytic = values(grads.get(var.as_tensor()).unwrap());
        for idx in 0..base.len() {
            let (mut plus, mut minus) = (base.clone(), base.clone());
            plus[idx] += eps;
            minus[idx] -= eps;
            let numeric = if name == "dx" {
                (loss(&plus, &w0) - loss(&minus, &w0)) / (2.0 * eps)
            } else {
                (loss(&x0, &plus) - loss(&x0, &minus)) / (2.0 * eps)
            };
            assert!((numeric - analytic[idx]).abs() < 1e-6, "{name}[{idx}]: {numeric} vs {}", analytic[idx]);
        }
    }
}

#[test]
fn gradients_match_finite_differences() {
    // Odd sizes, stride 2 that does not divide the width, padding, groups.
    check_finite_differences((2, 4, 2, 5, 6, 3, 2, 1, 1, 2));
    // Dilation with stride.
    check_finite_differences((1, 2, 3, 9, 8, 3, 2, 2, 2, 1));
    // Depthwise, stride 2 that does not divide, padding wider than a tap reaches.
    check_finite_differences((2, 3, 3, 7, 6, 3, 2, 2, 1, 3));
}

#[test]
fn half_precision_goes_through_f32() {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &Device::Cpu).unwrap();
    let wt = Tensor::randn(0f32, 1.0, (4, 3, 3, 3), &Device::Cpu).unwrap();
    let config = Conv2dConfig::new(1, 1);
    let full = conv2d_forward(&x, &wt, config).unwrap();
    let half = conv2d_forward(&x.to_dtype(DType::F16).unwrap(), &wt.to_dtype(DType::F16).unwrap(), config).unwrap();
    assert_eq!(half.dtype(), DType::F16);
    assert_close("f16", &values(&half), &values(&full), 1e-2);
}

#[test]
fn shapes_that_do_not_fit_are_errors() {
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let wt = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d_forward(&x, &wt, Conv2dConfig::new(1, 1)).is_err());
    let wt = Tensor::zeros((4, 3, 7, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d_forward(&x, &wt, Conv2dConfig::new(1, 0)).is_err());
}

/// Gradients are formed only for tensors that track one (the stem's input is the image batch),
/// and skipping one leaves the other exactly as it was.
#[test]
fn untracked_operands_get_no_gradient_and_change_nothing_else() {
    let dev = Device::Cpu;
    let config = Conv2dConfig { stride: 2, padding: 3, dilation: 1, groups: 1 };
    let x = Tensor::randn(0f64, 1.0, (2, 3, 17, 15), &dev).unwrap();
    let w = Tensor::randn(0f64, 1.0, (8, 3, 7, 7), &dev).unwrap();
    let (xv, wv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
    let loss = |x: &Tensor, w: &Tensor| {
        let y = conv2d_forward(x, w, config).unwrap();
        let weights = Tensor::arange(0f64, y.elem_count() as f64, &dev).unwrap().reshape(y.dims()).unwrap();
        (y * weights).unwrap().sum_all().unwrap().backward().unwrap()
    };
    let both = loss(xv.as_tensor(), wv.as_tensor());

    let image_input = loss(&x, wv.as_tensor());
    assert!(image_input.get(&x).is_none(), "an untracked input got a gradient");
    assert_eq!(values(image_input.get(wv.as_tensor()).unwrap()), values(both.get(wv.as_tensor()).unwrap()));

    let frozen_weight = loss(xv.as_tensor(), &w);
    assert!(frozen_weight.get(&w).is_none(), "an untracked weight got a gradient");
    assert_eq!(values(frozen_weight.get(xv.as_tensor()).unwrap()), values(both.get(xv.as_tensor()).unwrap()));
}

/// The channels-last depthwise op (bias folded in) against the transposes around the NCHW
/// convolution that CUDA runs, values and all three gradients, in float64.
#[test]
fn channels_last_depthwise_matches_the_generic_path() {
    // (batch, h, w, channels, kernel, stride, padding)
    for (b, h, w, c, k, s, p) in
        [(2, 7, 9, 5, 3, 1, 1), (3, 8, 6, 4, 5, 2, 2), (1, 6, 7, 3, 3, 2, 0), (2, 4, 4, 6, 3, 1, 2)]
    {
        let case = format!("{b}×{h}×{w}×{c} k{k} s{s} p{p}");
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (b, h, w, c), &Device::Cpu).unwrap()).unwrap();
        let wt = Var::from_tensor(&Tensor::randn(0f64, 1.0, (c, 1, k, k), &Device::Cpu).unwrap()).unwrap();
        let bias = Var::from_tensor(&Tensor::randn(0f64, 1.0, c, &Device::Cpu).unwrap()).unwrap();
        let run = || dmlp_nn::depthwise_conv2d_nhwc(x.as_tensor(), wt.as_tensor(), bias.as_tensor(), s, p).unwrap();
        let ours = run();
        let theirs = dmlp_nn::with_generic_ops(run);
        assert_eq!(ours.dims(), theirs.dims(), "{case}");
        assert_close(&format!("{case} forward"), &values(&ours), &values(&theirs), 1e-12);
        let mix = Tensor::randn(0f64, 1.0, ours.dims(), &Device::Cpu).unwrap();
        let ga = (ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in [("dx", &x), ("dw", &wt), ("db", &bias)] {
            let (a, b) = (values(ga.get(var.as_tensor()).unwrap()), values(gb.get(var.as_tensor()).unwrap()));
            assert_close(&format!("{case} {name}"), &a, &b, 1e-11);
        }
        // The same on the map's tokens [B, h·w, C].
        let tokens = x.as_tensor().reshape((b, h * w, c)).unwrap();
        let run_tokens =
            || dmlp_nn::depthwise_conv2d_tokens(&tokens, (h, w), wt.as_tensor(), bias.as_tensor(), s, p).unwrap();
        let (ours, theirs) = (run_tokens(), dmlp_nn::with_generic_ops(run_tokens));
        assert_eq!(ours.rank(), 3, "{case}");
        assert_close(&format!("{case} tokens"), &values(&ours), &values(&theirs), 1e-12);
        let ga = (ours * &mix.flatten_from(1).unwrap().reshape(theirs.dims()).unwrap()).unwrap();
        let gb = (theirs * &mix.flatten_from(1).unwrap().reshape(ga.dims()).unwrap()).unwrap();
        let (ga, gb) = (ga.sum_all().unwrap().backward().unwrap(), gb.sum_all().unwrap().backward().unwrap());
        for (name, var) in [("dx", &x), ("dw", &wt), ("db", &bias)] {
            let (a, b) = (values(ga.get(var.as_tensor()).unwrap()), values(gb.get(var.as_tensor()).unwrap()));
            assert_close(&format!("{case} tokens {name}"), &a, &b, 1e-11);
        }
    }
}
