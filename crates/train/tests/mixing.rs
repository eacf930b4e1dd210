//! Mixup and CutMix as the transformer recipe switches them per batch (timm's `Mixup` with
//! `mixup_alpha`, `cutmix_alpha`, `switch_prob`, `correct_lam`).

use candle_core::{Device, Tensor};
use dmlp_train::{StepContext, TrainConfig, cutmix, draw_mixup};

fn step(epoch: usize, iteration: usize) -> StepContext {
    StepContext { epoch, iteration, lr: 0.1 }
}

fn config(mixup_alpha: f64, cutmix_alpha: f64, mix_switch_prob: f64) -> TrainConfig {
    TrainConfig { mixup_alpha, cutmix_alpha, mix_switch_prob, ..TrainConfig::recipe(1, 8, 0.1) }
}

#[test]
fn mixing_off_is_the_identity_and_mixup_alone_never_cuts() {
    let draw = draw_mixup(&config(0.0, 0.0, 0.5), 6, (32, 32), &step(1, 0)).unwrap();
    assert_eq!((draw.lambda, draw.perm, draw.cut), (1.0, (0..6).collect(), None));
    for i in 0..50 {
        let draw = draw_mixup(&config(0.4, 0.0, 0.5), 6, (32, 32), &step(2, i)).unwrap();
        assert!(draw.cut.is_none() && (0.0..=1.0).contains(&draw.lambda));
        let mut sorted = draw.perm.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..6).collect::<Vec<u32>>());
    }
}

#[test]
fn cutmix_lambda_is_the_area_its_box_leaves() {
    let (h, w) = (24, 40);
    let mut boxes = 0;
    for i in 0..200 {
        let draw = draw_mixup(&config(0.0, 1.0, 0.5), 8, (h, w), &step(1, i)).unwrap();
        let [y0, y1, x0, x1] = draw.cut.expect("CutMix alone cuts every batch");
        assert!(y0 <= y1 && y1 <= h && x0 <= x1 && x1 <= w);
        let kept = 1.0 - ((y1 - y0) * (x1 - x0)) as f64 / (h * w) as f64;
        assert!((draw.lambda - kept).abs() < 1e-12, "λ {} vs area kept {kept}", draw.lambda);
        boxes += usize::from(y1 > y0 && x1 > x0);
    }
    assert!(boxes > 150, "most boxes are not empty: {boxes}");
}

#[test]
fn both_on_switch_per_batch_at_the_configured_rate() {
    let count = |p: f64| {
        (0..400).filter(|&i| draw_mixup(&config(0.8, 1.0, p), 8, (16, 16), &step(1, i)).unwrap().cut.is_some()).count()
    };
    assert_eq!(count(0.0), 0);
    assert_eq!(count(1.0), 400);
    let half = count(0.5);
    assert!((160..240).contains(&half), "{half} of 400 batches took CutMix at 0.5");
    // The same step draws the same way (resume is exact).
    let c = config(0.8, 1.0, 0.5);
    assert_eq!(draw_mixup(&c, 8, (16, 16), &step(3, 7)).unwrap(), draw_mixup(&c, 8, (16, 16), &step(3, 7)).unwrap());
}

#[test]
fn cutmix_pastes_the_partners_box_and_nothing_else() {
    let (b, h, w) = (3, 5, 6);
    // Image k is filled with k + 1.
    let values: Vec<f32> = (0..b).flat_map(|k| vec![(k + 1) as f32; 2 * h * w]).collect();
    let xs = Tensor::from_vec(values, (b, 2, h, w), &Device::Cpu).unwrap();
    let perm = Tensor::new(&[2u32, 0, 1], &Device::Cpu).unwrap();
    let mixed = cutmix(&xs, &perm, [1, 3, 2, 5]).unwrap();
    let out: Vec<f32> = mixed.flatten_all().unwrap().to_vec1().unwrap();
    let partner = [3.0, 1.0, 2.0];
    for (i, &value) in out.iter().enumerate() {
        let (k, y, x) = (i / (2 * h * w), (i / w) % h, i % w);
        let inside = (1..3).contains(&y) && (2..5).contains(&x);
        let expected = if inside { partner[k] } else { (k + 1) as f32 };
        assert_eq!(value, expected, "image {k} at ({y}, {x})");
    }
}
