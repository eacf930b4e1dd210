//! The vendored candle backward's own changes (vendor/README.md): slices' gradients joined.

use candle_core::{D, Device, Tensor, Var};

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// `x` `[2, 10, 3]`, used whole (`Σ x²`) and through slices along dimension 1 weighted by `c`:
/// each slice `[start, start + len)` adds `c` to the gradient of its rows, so the gradient is
/// `2x` plus, per row, the weights of the slices that cover it (none in a gap).
fn gradient_through_slices(slices: &[(usize, usize, f64)]) -> (Vec<f64>, Vec<f64>) {
    let x = Var::from_tensor(&Tensor::arange(0f64, 60.0, &Device::Cpu).unwrap().reshape((2, 10, 3)).unwrap()).unwrap();
    let mut loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
    for &(start, len, c) in slices {
        let slice = x.as_tensor().narrow(1, start, len).unwrap();
        loss = (loss + (slice * c).unwrap().sum_all().unwrap()).unwrap();
    }
    let got = values(loss.backward().unwrap().get(x.as_tensor()).unwrap());
    let mut expected = values(&(x.as_tensor() * 2.0).unwrap());
    for (i, e) in expected.iter_mut().enumerate() {
        let row = i / 3 % 10;
        *e += slices.iter().filter(|(s, l, _)| (*s..s + l).contains(&row)).map(|(_, _, c)| c).sum::<f64>();
    }
    (got, expected)
}

#[test]
fn a_split_with_gaps_gets_each_slices_gradient_and_zeros_between() {
    // Out of order, a gap at rows 5–6 and row 9 uncovered.
    let (got, expected) = gradient_through_slices(&[(7, 2, 3.0), (0, 2, 1.0), (2, 3, -2.0)]);
    assert_eq!(got, expected);
    // One slice covering everything.
    let (got, expected) = gradient_through_slices(&[(0, 10, 0.5)]);
    assert_eq!(got, expected);
}

#[test]
fn overlapping_slices_add_up() {
    let (got, expected) = gradient_through_slices(&[(0, 4, 1.0), (2, 4, 10.0), (2, 4, 100.0), (8, 2, -1.0)]);
    assert_eq!(got, expected);
}

#[test]
fn slices_along_two_dimensions_add_up() {
    let x = Var::from_tensor(&Tensor::arange(0f64, 12.0, &Device::Cpu).unwrap().reshape((3, 4)).unwrap()).unwrap();
    let rows = x.as_tensor().narrow(0, 1, 2).unwrap().sum_all().unwrap();
    let cols = (x.as_tensor().narrow(D::Minus1, 0, 1).unwrap() * 5.0).unwrap().sum_all().unwrap();
    let grads = (rows + cols).unwrap().backward().unwrap();
    let expected: Vec<f64> =
        (0..12).map(|i| f64::from(u8::from((1..3).contains(&(i / 4)))) + if i % 4 == 0 { 5.0 } else { 0.0 }).collect();
    assert_eq!(values(grads.get(x.as_tensor()).unwrap()), expected);
}
