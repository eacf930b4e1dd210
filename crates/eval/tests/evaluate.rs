//! Test-time views average logits over every crop with each image's location repeated, and an
//! evaluation pass counts what the scorer says, with predictions in source order.

use candle_core::{Device, Tensor};
use dmlp_eval::{EvalError, ImageView, InMemoryBatches, ScoreKind, TensorBatch, evaluate, view_mean_logits};

/// A toy "model": logit 0 is the image's pixel sum, logit 1 the location's sum, logit 2 zero.
fn forward(images: &Tensor, loc: Option<&Tensor>) -> Result<Tensor, EvalError> {
    let n = images.dim(0)?;
    let pixels = images.flatten_from(1)?.sum_keepdim(1)?;
    let loc = match loc {
        Some(loc) => loc.sum_keepdim(1)?,
        None => Tensor::zeros((n, 1), candle_core::DType::F32, images.device())?,
    };
    let zero = Tensor::zeros((n, 1), candle_core::DType::F32, images.device())?;
    Ok(Tensor::cat(&[&pixels, &loc, &zero], 1)?)
}

#[test]
fn test_time_views_average_logits_over_every_crop_with_locations_repeated() {
    let device = Device::Cpu;
    let one = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &device).unwrap();
    let three = Tensor::randn(0f32, 1.0, (6, 3, 4, 4), &device).unwrap();
    let loc = Tensor::randn(0f32, 1.0, (2, 4), &device).unwrap();
    let targets = Tensor::new(&[0u32, 2], &device).unwrap();
    let batch = TensorBatch {
        views: vec![ImageView { images: one.clone(), crops: 1 }, ImageView { images: three.clone(), crops: 3 }],
        loc: Some(loc.clone()),
        targets,
        rows: Vec::new(),
    };
    let got: Vec<Vec<f32>> = view_mean_logits(&forward, &batch).unwrap().to_vec2().unwrap();
    let sums = |t: &Tensor| -> Vec<f32> { t.flatten_from(1).unwrap().sum(1).unwrap().to_vec1().unwrap() };
    let (first, crops, loc_sums) = (sums(&one), sums(&three), sums(&loc));
    for image in 0..2 {
        let pixels = (first[image] + crops[3 * image] + crops[3 * image + 1] + crops[3 * image + 2]) / 4.0;
        assert!((got[image][0] - pixels).abs() < 1e-5, "image {image}: {} vs {pixels}", got[image][0]);
        assert!((got[image][1] - loc_sums[image]).abs() < 1e-5, "every crop sees its image's location");
        assert_eq!(got[image][2], 0.0);
    }
    // One view of one crop: the logits themselves.
    let single = TensorBatch::single(one.clone(), Some(loc.clone()), Tensor::new(&[0u32, 2], &device).unwrap());
    let direct: Vec<Vec<f32>> = forward(&one, Some(&loc)).unwrap().to_vec2().unwrap();
    assert_eq!(view_mean_logits(&forward, &single).unwrap().to_vec2::<f32>().unwrap(), direct);
}

#[test]
fn an_evaluation_counts_the_scorers_hits_and_lists_predictions_in_source_order() {
    let device = Device::Cpu;
    // The "images" are the scores themselves: [B, 3] as a batch's only view.
    let batch = |scores: &[[f32; 3]], targets: &[u32], rows: Vec<usize>| TensorBatch {
        rows,
        ..TensorBatch::single(
            Tensor::from_vec(scores.concat(), (scores.len(), 3), &device).unwrap(),
            None,
            Tensor::new(targets, &device).unwrap(),
        )
    };
    let source = InMemoryBatches(vec![
        batch(&[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]], &[0, 2], vec![5, 6]),
        batch(&[[0.0, 0.0, 9.0]], &[2], vec![7]),
    ]);
    let scorer = |b: &TensorBatch| Ok(b.single_view()?.clone());
    let loss = |scores: &Tensor, _: &Tensor| scores.sum_all()?.affine(0.0, 0.5);
    let evaluation = evaluate(&source, &scorer, ScoreKind::Logits, Some(&loss), 2).unwrap();
    let a = &evaluation.accuracy;
    assert_eq!(a.images, 3);
    assert!((a.top1 - 200.0 / 3.0).abs() < 1e-9);
    assert_eq!(a.top5, 100.0);
    assert_eq!(a.loss, Some(0.5));
    assert_eq!((a.per_class[2].images, a.per_class[2].top1_hits), (2, 1));
    assert!((a.mean_class_top1 - 75.0).abs() < 1e-9, "classes 0 and 2: 100 and 50");
    let rows: Vec<usize> = evaluation.predictions.iter().map(|p| p.row).collect();
    assert_eq!(rows, vec![5, 6, 7]);
    let second = &evaluation.predictions[1];
    assert_eq!(second.top_k.iter().map(|(c, _)| *c).collect::<Vec<_>>(), vec![1, 2]);
    let expected = 3f32.exp() / (1.0 + 3f32.exp() + 1f32.exp());
    assert!((second.top_k[0].1 - expected).abs() < 1e-6);

    // A scorer that returns NaN for one image: an error, not a hit.
    let nan = InMemoryBatches(vec![batch(&[[f32::NAN, 1.0, 0.0]], &[0], vec![0])]);
    let err = evaluate(&nan, &scorer, ScoreKind::Logits, None, 0).unwrap_err();
    assert!(matches!(err, EvalError::NonFinite { .. }), "{err}");
}
