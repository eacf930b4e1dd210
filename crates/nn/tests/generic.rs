//! The device-generic path of every op (what CUDA runs) against the CPU custom ops, values and
//! gradients, in float64 on the CPU: [`dmlp_nn::with_generic_ops`] forces the generic path.

use crate::common;

use common::{assert_close, values};

use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use dmlp_nn::{
    AvgPool2d, Conv2dConfig, MaxPool2d, ParamStore, add_relu, batch_norm, batched_vecmat, conv2d_forward,
    generated_projection, layer_norm, linear, linear_forward, relu, with_generic_ops,
};

fn randn(dims: &[usize]) -> Tensor {
    Tensor::randn(0f64, 1.0, dims, &Device::Cpu).unwrap()
}

/// Values rounded to a coarse grid, so that pooling windows hold ties.
fn coarse(dims: &[usize]) -> Tensor {
    (randn(dims) * 2.0).unwrap().round().unwrap()
}

/// Runs `f` on fresh variables made from `inputs` on both paths; compares the outputs and the
/// gradient of a weighted sum of the output with respect to every input.
fn same_on_both_paths(what: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Tensor) {
    let run = |generic: bool| {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).unwrap()).collect();
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let out = if generic { with_generic_ops(|| f(&tensors)) } else { f(&tensors) };
        // A weight per output position, the same on both paths, so every gradient entry counts.
        let n = out.elem_count();
        let mix: Vec<f64> = (0..n).map(|i| ((i * 7919 % 101) as f64 / 50.0) - 1.0).collect();
        let mix = Tensor::from_vec(mix, out.dims(), &Device::Cpu).unwrap();
        let grads = (out.clone() * mix).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Vec<f64>> = vars.iter().map(|v| values(grads.get(v.as_tensor()).unwrap())).collect();
        (values(&out), grads)
    };
    let (custom_out, custom_grads) = run(false);
    let (generic_out, generic_grads) = run(true);
    assert_close(&format!("{what} forward"), &generic_out, &custom_out, 1e-12);
    for (idx, (g, c)) in generic_grads.iter().zip(&custom_grads).enumerate() {
        assert_close(&format!("{what} gradient of input {idx}"), g, c, 1e-11);
    }
}

#[test]
fn convolutions_agree_on_square_and_non_square_inputs() {
    // (batch, in, out, h, w, kernel, stride, padding, dilation, groups): remainders after the last
    // window that differ between height and width, that are equal and non-zero, and zero.
    let cases = [
        (2, 3, 4, 8, 7, 3, 2, 1, 1, 1),
        (2, 3, 4, 8, 8, 3, 2, 1, 1, 1),
        (2, 3, 8, 17, 14, 7, 2, 3, 1, 1),
        (2, 8, 6, 7, 10, 1, 2, 0, 1, 1),
        (2, 4, 6, 9, 6, 3, 2, 1, 1, 2),
        (1, 2, 2, 5, 8, 3, 3, 1, 1, 1),
        (2, 4, 4, 9, 8, 3, 1, 2, 2, 1),
        (2, 3, 4, 9, 7, 3, 1, 1, 1, 1),
        // Padding beyond the kernel's reach (the transposed padding is a cut), a stride beyond
        // the kernel (rows no window reads), depthwise, dilation with stride and a remainder.
        (2, 3, 5, 6, 5, 1, 1, 1, 1, 1),
        (2, 4, 3, 9, 11, 1, 3, 0, 1, 1),
        (2, 6, 6, 8, 9, 3, 2, 1, 1, 6),
        (1, 2, 4, 12, 10, 3, 2, 2, 2, 1),
    ];
    for (b, c, o, h, w, k, s, p, d, g) in cases {
        let config = Conv2dConfig { stride: s, padding: p, dilation: d, groups: g };
        same_on_both_paths(
            &format!("conv {h}x{w} k{k} s{s} p{p} d{d} g{g}"),
            &[randn(&[b, c, h, w]), randn(&[o, c / g, k, k])],
            |t| conv2d_forward(&t[0], &t[1], config).unwrap(),
        );
    }
}

#[test]
fn pools_agree_with_ties_padding_and_ceil_mode() {
    for (h, w) in [(7, 9), (8, 8), (11, 6)] {
        for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (3, 3, 0), (2, 2, 1), (1, 1, 0)] {
            for ceil_mode in [false, true] {
                let input = coarse(&[2, 3, h, w]);
                let max = MaxPool2d { kernel, stride, padding, ceil_mode };
                let case = format!("{h}x{w} k{kernel} s{stride} p{padding} ceil {ceil_mode}");
                same_on_both_paths(&format!("max pool {case}"), std::slice::from_ref(&input), |t| {
                    max.forward(&t[0]).unwrap()
                });
                for count_include_pad in [false, true] {
                    let avg = AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad };
                    same_on_both_paths(
                        &format!("avg pool {case} include_pad {count_include_pad}"),
                        std::slice::from_ref(&input),
                        |t| avg.forward(&t[0]).unwrap(),
                    );
                }
            }
        }
    }
}

#[test]
fn max_pool_routes_a_tie_to_the_first_maximum_on_the_generic_path() {
    let xs = Tensor::from_slice(&[1f64, 5., 5., 0., 5., 2., 3., 4., 1.], (1, 1, 3, 3), &Device::Cpu).unwrap();
    let var = Var::from_tensor(&xs).unwrap();
    let pool = MaxPool2d { kernel: 2, stride: 1, padding: 0, ceil_mode: false };
    let ys = with_generic_ops(|| pool.forward(var.as_tensor()).unwrap());
    let grads = ys.sum_all().unwrap().backward().unwrap();
    assert_eq!(values(grads.get(var.as_tensor()).unwrap()), [0., 2., 0., 0., 2., 0., 0., 0., 0.]);
}

#[test]
fn activations_norms_and_products_agree() {
    same_on_both_paths("relu", &[coarse(&[2, 3, 4, 5])], |t| relu(&t[0]).unwrap());
    same_on_both_paths("add_relu", &[randn(&[2, 3, 4, 5]), randn(&[2, 3, 4, 5])], |t| add_relu(&t[0], &t[1]).unwrap());
    same_on_both_paths("linear", &[randn(&[5, 7]), randn(&[3, 7]), randn(&[3])], |t| {
        linear_forward(&t[0], &t[1], Some(&t[2])).unwrap()
    });
    same_on_both_paths("batched vecmat", &[randn(&[4, 3]), randn(&[4, 6])], |t| batched_vecmat(&t[0], &t[1]).unwrap());

    let store = ParamStore::new(3);
    let generator = linear(5, 12, true, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
    same_on_both_paths("generated projection", &[randn(&[2, 4]), randn(&[2, 5])], |t| {
        generated_projection(&t[0], &t[1], &generator, (4, 3)).unwrap()
    });
    let norm = layer_norm(7, store.var_builder(DType::F64, &Device::Cpu).pp("norm")).unwrap();
    same_on_both_paths("layer norm", &[randn(&[3, 2, 7])], |t| norm.forward(&t[0]).unwrap());
}

#[test]
fn batch_norm_agrees_in_training_with_and_without_relu_and_updates_the_same_statistics() {
    for relu_after in [false, true] {
        let input = randn(&[4, 3, 5, 6]);
        let run = |generic: bool| {
            let store = ParamStore::new(5);
            let bn = batch_norm(3, store.var_builder(DType::F64, &Device::Cpu)).unwrap();
            let forward = |xs: &Tensor| {
                if relu_after { bn.forward_relu_t(xs, true).unwrap() } else { bn.forward_t(xs, true).unwrap() }
            };
            let x = Var::from_tensor(&input).unwrap();
            let ys = if generic { with_generic_ops(|| forward(x.as_tensor())) } else { forward(x.as_tensor()) };
            let mix = Tensor::from_vec(
                (0..ys.elem_count()).map(|i| (i % 13) as f64 - 6.0).collect(),
                ys.dims(),
                &Device::Cpu,
            )
            .unwrap();
            let grads = (ys.clone() * mix).unwrap().sum_all().unwrap().backward().unwrap();
            let mut out = vec![values(&ys), values(grads.get(x.as_tensor()).unwrap())];
            for (name, var) in store.vars() {
                match grads.get(var.as_tensor()) {
                    Some(grad) => out.push(values(grad)),
                    None => assert!(name.contains("running"), "{name} got no gradient"),
                }
                if name.contains("running") {
                    out.push(values(var.as_tensor()));
                }
            }
            out
        };
        let (custom, generic) = (run(false), run(true));
        assert_eq!(custom.len(), generic.len());
        for (idx, (g, c)) in generic.iter().zip(&custom).enumerate() {
            assert_close(&format!("batch norm (relu {relu_after}) part {idx}"), g, c, 1e-11);
        }
    }
}
