//! Top-1, top-5 and per-class accuracy over score rows, refusing non-finite scores.

use serde::{Deserialize, Serialize};

use crate::EvalError;

/// How one class fared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassAccuracy {
    /// Images of this class in the evaluation.
    pub images: usize,
    /// Of those, how many were ranked first.
    pub top1_hits: usize,
}

impl ClassAccuracy {
    /// Top-1 in percent; `None` for a class without images.
    pub fn top1(&self) -> Option<f64> {
        (self.images > 0).then(|| 100.0 * self.top1_hits as f64 / self.images as f64)
    }
}

/// What one evaluation measured. Percentages are in [0, 100].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    pub images: usize,
    pub top1: f64,
    pub top5: f64,
    /// Mean of the per-class top-1 over the classes that have images (the "mean per-class
    /// accuracy" of long-tailed benchmarks).
    pub mean_class_top1: f64,
    /// The loss averaged per image, when the evaluation computed one.
    pub loss: Option<f64>,
    /// Indexed by class.
    pub per_class: Vec<ClassAccuracy>,
}

/// Counts hits batch by batch.
#[derive(Debug, Clone, Default)]
pub struct AccuracyCounter {
    images: usize,
    top1: usize,
    top5: usize,
    per_class: Vec<ClassAccuracy>,
    loss_sum: f64,
    loss_images: usize,
}

/// Ranks ahead of the target in `row`: strictly larger scores (ties count in the target's favour).
fn rank_of_target(row: &[f32], target: usize) -> usize {
    let own = row[target];
    row.iter().filter(|v| **v > own).count()
}

fn check_row(row: &[f32], target: u32, image: usize) -> Result<(), EvalError> {
    if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite { image, value: *bad });
    }
    if target as usize >= row.len() {
        return Err(EvalError::Data(format!(
            "image {image}: class {target} is not below the {} scored classes",
            row.len()
        )));
    }
    Ok(())
}

/// Top-k hits of score `rows` against `targets` (ties count in the target's favour); an error for
/// a non-finite score or a target out of range, so that no metric counts a NaN as a hit.
pub fn top_k_hits(rows: &[Vec<f32>], targets: &[u32], k: usize) -> Result<usize, EvalError> {
    if rows.len() != targets.len() {
        return Err(EvalError::Data(format!("{} score rows for {} targets", rows.len(), targets.len())));
    }
    let mut hits = 0;
    for (image, (row, target)) in rows.iter().zip(targets).enumerate() {
        check_row(row, *target, image)?;
        hits += usize::from(rank_of_target(row, *target as usize) < k);
    }
    Ok(hits)
}

impl AccuracyCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one batch of score rows `[B][C]` against its targets.
    pub fn add(&mut self, rows: &[Vec<f32>], targets: &[u32]) -> Result<(), EvalError> {
        if rows.len() != targets.len() {
            return Err(EvalError::Data(format!("{} score rows for {} targets", rows.len(), targets.len())));
        }
        for (row, target) in rows.iter().zip(targets) {
            check_row(row, *target, self.images)?;
            if self.per_class.len() < row.len() {
                self.per_class.resize(row.len(), ClassAccuracy::default());
            }
            let rank = rank_of_target(row, *target as usize);
            let class = &mut self.per_class[*target as usize];
            class.images += 1;
            class.top1_hits += usize::from(rank < 1);
            self.top1 += usize::from(rank < 1);
            self.top5 += usize::from(rank < 5);
            self.images += 1;
        }
        Ok(())
    }

    /// Adds a batch's mean loss over its `images`; a non-finite loss is an error.
    pub fn add_loss(&mut self, mean: f64, images: usize) -> Result<(), EvalError> {
        self.add_loss_sum(mean * images as f64, images)
    }

    /// Adds the summed loss of `images` images; a non-finite loss is an error.
    pub fn add_loss_sum(&mut self, sum: f64, images: usize) -> Result<(), EvalError> {
        if !sum.is_finite() {
            return Err(EvalError::NonFinite { image: self.loss_images, value: sum as f32 });
        }
        self.loss_sum += sum;
        self.loss_images += images;
        Ok(())
    }

    pub fn images(&self) -> usize {
        self.images
    }

    /// The counts as percentages; an error when nothing was counted.
    pub fn finish(&self) -> Result<Accuracy, EvalError> {
        if self.images == 0 {
            return Err(EvalError::Data("the evaluation split is empty".into()));
        }
        let pct = |hits: usize| 100.0 * hits as f64 / self.images as f64;
        let class_top1: Vec<f64> = self.per_class.iter().filter_map(ClassAccuracy::top1).collect();
        Ok(Accuracy {
            images: self.images,
            top1: pct(self.top1),
            top5: pct(self.top5),
            mean_class_top1: class_top1.iter().sum::<f64>() / class_top1.len().max(1) as f64,
            loss: (self.loss_images > 0).then(|| self.loss_sum / self.loss_images as f64),
            per_class: self.per_class.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_count_for_the_target_and_per_class_accuracy_averages_over_present_classes() {
        let rows = vec![
            vec![0.9, 0.1, 0.0], // class 0: first
            vec![0.5, 0.5, 0.0], // class 1: tied first, counts
            vec![0.7, 0.2, 0.1], // class 1: second
            vec![0.0, 0.0, 1.0], // class 2: first
        ];
        let targets = [0, 1, 1, 2];
        let mut counter = AccuracyCounter::new();
        counter.add(&rows[..2], &targets[..2]).unwrap();
        counter.add(&rows[2..], &targets[2..]).unwrap();
        counter.add_loss(2.0, 2).unwrap();
        counter.add_loss(1.0, 2).unwrap();
        let acc = counter.finish().unwrap();
        assert_eq!(acc.images, 4);
        assert_eq!(acc.top1, 75.0);
        assert_eq!(acc.top5, 100.0);
        assert_eq!(acc.loss, Some(1.5));
        assert_eq!(acc.per_class[1], ClassAccuracy { images: 2, top1_hits: 1 });
        assert!((acc.mean_class_top1 - (100.0 + 50.0 + 100.0) / 3.0).abs() < 1e-12);
        assert_eq!(top_k_hits(&rows, &targets, 1).unwrap(), 3);
        assert_eq!(top_k_hits(&rows, &targets, 2).unwrap(), 4);
    }

    #[test]
    fn a_nan_or_infinite_score_is_an_error_not_a_hit() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let rows = vec![vec![0.1, 0.2], vec![bad, bad]];
            let err = top_k_hits(&rows, &[1, 0], 1).unwrap_err();
            assert!(matches!(err, EvalError::NonFinite { image: 1, .. }), "{err}");
            let mut counter = AccuracyCounter::new();
            assert!(counter.add(&rows, &[1, 0]).is_err());
        }
        let mut counter = AccuracyCounter::new();
        assert!(counter.add_loss(f64::NAN, 3).is_err());
        assert!(AccuracyCounter::new().finish().is_err(), "nothing counted");
        assert!(top_k_hits(&[vec![0.0, 1.0]], &[2], 1).is_err(), "target out of range");
    }
}
