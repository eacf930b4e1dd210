//! The transformers' ops beyond the CNNs': stochastic depth, adaptive pooling, batched products.

use candle_core::{DType, Device, Tensor, Var};
use dmlp_nn::{DropoutRng, adaptive_avg_pool2d, drop_path};

#[test]
fn drop_path_drops_whole_samples_and_keeps_the_mean() {
    let rng = DropoutRng::new(5);
    let xs = Tensor::ones((4000, 3, 2), DType::F32, &Device::Cpu).unwrap();
    let ys = drop_path(&xs, 0.25, true, &rng).unwrap();
    let rows: Vec<Vec<f32>> = ys.reshape((4000, 6)).unwrap().to_vec2().unwrap();
    let mut dropped = 0;
    for row in &rows {
        // A sample is dropped whole or kept whole, scaled by 1/(1 − p).
        assert!(row.iter().all(|v| *v == row[0]), "{row:?}");
        assert!(row[0] == 0.0 || (row[0] - 1.0 / 0.75).abs() < 1e-6, "{}", row[0]);
        dropped += usize::from(row[0] == 0.0);
    }
    let fraction = dropped as f64 / 4000.0;
    assert!((fraction - 0.25).abs() < 0.03, "dropped {fraction}");
    // Evaluation and p = 0 are the identity.
    assert_eq!(drop_path(&xs, 0.25, false, &rng).unwrap().to_vec3::<f32>().unwrap(), xs.to_vec3::<f32>().unwrap());
    assert_eq!(drop_path(&xs, 0.0, true, &rng).unwrap().to_vec3::<f32>().unwrap(), xs.to_vec3::<f32>().unwrap());
    // The same seed draws the same samples.
    let again = drop_path(&xs, 0.25, true, &DropoutRng::new(5)).unwrap();
    assert_eq!(again.reshape((4000, 6)).unwrap().to_vec2::<f32>().unwrap(), rows);
}

#[test]
fn adaptive_pooling_uses_pytorchs_windows_and_differentiates() {
    // 3 → 2: windows [0, 2) and [1, 3) (they overlap); 5 → 7: windows of one or two values.
    let xs =
        Var::from_tensor(&Tensor::arange(0f32, 15.0, &Device::Cpu).unwrap().reshape((1, 1, 3, 5)).unwrap()).unwrap();
    let ys = adaptive_avg_pool2d(xs.as_tensor(), (2, 7)).unwrap();
    let got: Vec<Vec<f32>> = ys.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    // torch.nn.functional.adaptive_avg_pool2d(torch.arange(15.).reshape(1, 1, 3, 5), (2, 7)).
    let want = [[2.5f32, 3.0, 4.0, 4.5, 5.0, 6.0, 6.5], [7.5, 8.0, 9.0, 9.5, 10.0, 11.0, 11.5]];
    for (g, w) in got.iter().zip(want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() < 1e-5, "{got:?}");
        }
    }
    let grads = ys.sum_all().unwrap().backward().unwrap();
    let grad: Vec<f32> = grads.get(xs.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // Each output spreads 1 over its window: the gradient sums to the 14 outputs.
    assert!((grad.iter().sum::<f32>() - 14.0).abs() < 1e-4, "{grad:?}");
    assert!(grad.iter().all(|g| *g > 0.0));
}

/// The batched products against candle's matmul, values and both gradients, with the product's
/// gradient weighted so every entry matters; `matmul_nt` reads its right operand transposed.
#[test]
fn batched_products_match_candles_matmul_with_gradients() {
    let a = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 5, 4), &Device::Cpu).unwrap()).unwrap();
    let b = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 4, 6), &Device::Cpu).unwrap()).unwrap();
    let bt = Var::from_tensor(&b.as_tensor().transpose(2, 3).unwrap().contiguous().unwrap()).unwrap();
    let mix = Tensor::randn(0f64, 1.0, (2, 3, 5, 6), &Device::Cpu).unwrap();
    let theirs = a.as_tensor().matmul(b.as_tensor()).unwrap();
    let g_theirs = (&theirs * &mix).unwrap().sum_all().unwrap().backward().unwrap();
    let values = |t: &Tensor| -> Vec<f64> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let close = |what: &str, x: &[f64], y: &[f64]| {
        assert_eq!(x.len(), y.len());
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            assert!((p - q).abs() < 1e-12, "{what}[{i}]: {p} vs {q}");
        }
    };
    for (name, ours, right) in [
        ("matmul", dmlp_nn::matmul(a.as_tensor(), b.as_tensor()).unwrap(), &b),
        ("matmul_nt", dmlp_nn::matmul_nt(a.as_tensor(), bt.as_tensor()).unwrap(), &bt),
    ] {
        close(name, &values(&ours), &values(&theirs));
        let grads = (&ours * &mix).unwrap().sum_all().unwrap().backward().unwrap();
        close(
            &format!("{name} dA"),
            &values(grads.get(a.as_tensor()).unwrap()),
            &values(g_theirs.get(a.as_tensor()).unwrap()),
        );
        let mut db = grads.get(right.as_tensor()).unwrap().clone();
        if name == "matmul_nt" {
            db = db.transpose(2, 3).unwrap().contiguous().unwrap();
        }
        close(&format!("{name} dB"), &values(&db), &values(g_theirs.get(b.as_tensor()).unwrap()));
    }
    // The generic path (CUDA's) computes the same.
    let generic = dmlp_nn::with_generic_ops(|| dmlp_nn::matmul_nt(a.as_tensor(), bt.as_tensor()).unwrap());
    close("generic matmul_nt", &values(&generic), &values(&theirs));
}

/// Bilinear and linear resizing against PyTorch's `F.interpolate(..., align_corners=False)`.
#[test]
fn resizing_matches_pytorchs_interpolate() {
    let xs = Tensor::arange(0f32, 12.0, &Device::Cpu).unwrap().reshape((1, 1, 3, 4)).unwrap();
    let ys: Vec<Vec<f32>> =
        dmlp_nn::resize_bilinear(&xs, (2, 5)).unwrap().squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
    // F.interpolate(torch.arange(12.).reshape(1, 1, 3, 4), size=(2, 5), mode="bilinear").
    let want = [[1.0f32, 1.7, 2.5, 3.3, 4.0], [7.0, 7.7, 8.5, 9.3, 10.0]];
    for (row, w) in ys.iter().zip(want) {
        for (a, b) in row.iter().zip(w) {
            assert!((a - b).abs() < 1e-5, "{ys:?}");
        }
    }
    let table = Tensor::new(&[[0f32, 1.0], [2.0, 3.0], [4.0, 5.0]], &Device::Cpu).unwrap();
    let up: Vec<Vec<f32>> = dmlp_nn::resize_linear_rows(&table, 5).unwrap().to_vec2().unwrap();
    // F.interpolate(t.T[None], 5, mode="linear")[0].T for t = [[0, 1], [2, 3], [4, 5]].
    let want = [[0f32, 1.0], [0.8, 1.8], [2.0, 3.0], [3.2, 4.2], [4.0, 5.0]];
    for (row, w) in up.iter().zip(want) {
        for (a, b) in row.iter().zip(w) {
            assert!((a - b).abs() < 1e-5, "{up:?}");
        }
    }
}
