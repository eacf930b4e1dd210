//! PriorsNet and GeoNet on small synthetic presence data: the loss is the documented one, the
//! sampler draws what it says, a trained prior ranks presences in its class's region above
//! background points, resume repeats the uninterrupted run, and GeoNet learns from the location.

use candle_core::{DType, Device, Tensor};
use dmlp_baselines::geonet::{GeoNet, GeoNetConfig, GeoNetFusion};
use dmlp_baselines::priorsnet::{
    Background, Presences, PriorsNet, PriorsNetConfig, Sampler, assume_negative_loss, background_inputs, epoch_rows,
    train_priorsnet,
};
use dmlp_geo::{Metadata, Observation};
use dmlp_train::{EpochMetrics, RunDir, Silent};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Region centres (lat, lon) of three classes.
const REGIONS: [(f64, f64); 3] = [(45.0, -100.0), (-20.0, 30.0), (10.0, 120.0)];

/// `n` presences per class around its region, encoded as Dynamic MLP's loader does (`geo`).
fn presences(n: usize, seed: u64) -> Presences {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut loc, mut labels) = (Vec::new(), Vec::new());
    for (class, (lat, lon)) in REGIONS.iter().enumerate() {
        for _ in 0..n {
            let obs = Observation::new(
                Some(lat + rng.random_range(-6.0..6.0)),
                Some(lon + rng.random_range(-6.0..6.0)),
                None,
            )
            .unwrap();
            loc.extend(obs.encode(Metadata::Geo).iter().map(|v| *v as f32));
            labels.push(class as u32);
        }
    }
    // One row without a location: dropped, and counted.
    loc.extend([0.0; 4]);
    labels.push(0);
    let loc = Tensor::from_vec(loc, (labels.len(), 4), &Device::Cpu).unwrap();
    let (presences, dropped) = Presences::from_encoded(&loc, &labels, Metadata::Geo).unwrap();
    assert_eq!(dropped, 1);
    presences
}

fn config(epochs: usize) -> PriorsNetConfig {
    PriorsNetConfig {
        batch_size: 64,
        lr: 5e-3,
        epochs,
        sampler: Sampler::ClassBalanced { per_class: 80 },
        seed: 3,
        ..PriorsNetConfig::default()
    }
}

#[test]
fn the_loss_is_the_full_assume_negative_loss() {
    let model = PriorsNet::new(4, 3, 0.5, 1, &Device::Cpu).unwrap();
    let inputs = presences(2, 1).inputs.narrow(0, 0, 3).unwrap();
    let background =
        background_inputs(3, 4, Background::Spherical, &mut ChaCha8Rng::seed_from_u64(2), &Device::Cpu).unwrap();
    let targets = Tensor::new(&[0u32, 0, 1], &Device::Cpu).unwrap();
    let loss = assume_negative_loss(&model, &inputs, &targets, &background, 3.0, false).unwrap();
    let sig = |t: &Tensor| -> Vec<Vec<f64>> {
        let logits: Vec<Vec<f32>> = model.logits_t(t, false).unwrap().to_vec2().unwrap();
        logits.iter().map(|r| r.iter().map(|v| 1.0 / (1.0 + (-f64::from(*v)).exp())).collect()).collect()
    };
    let (p, r) = (sig(&inputs), sig(&background));
    let eps = 1e-5;
    let mut m = 0.0;
    for (i, row) in p.iter().enumerate() {
        for (j, pij) in row.iter().enumerate() {
            m += if j == [0, 0, 1][i] { -3.0 * (pij + eps).ln() } else { -(1.0 - pij + eps).ln() };
        }
    }
    let n: f64 = r.iter().flatten().map(|rij| -(1.0 - rij + eps).ln()).sum();
    let expected = m / 9.0 + n / 9.0;
    let got = loss.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
    assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
}

#[test]
fn samplers_and_background_draw_what_they_say() {
    let labels: Vec<u32> = (0..50).map(|i| if i < 40 { 0 } else { 1 }).collect();
    let rows = epoch_rows(&labels, Sampler::ClassBalanced { per_class: 5 }, 1, 1);
    assert_eq!(rows.iter().filter(|&&r| labels[r] == 0).count(), 5);
    assert_eq!(rows.iter().filter(|&&r| labels[r] == 1).count(), 5);
    assert_ne!(rows, epoch_rows(&labels, Sampler::ClassBalanced { per_class: 5 }, 1, 2));
    let mut all = epoch_rows(&labels, Sampler::InstanceBalanced, 1, 1);
    all.sort_unstable();
    assert_eq!(all, (0..50).collect::<Vec<_>>());
    // Area-uniform: sin(latitude) is uniform, so |sin lat| averages 1/2.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let b = background_inputs(20_000, 6, Background::Spherical, &mut rng, &Device::Cpu).unwrap();
    let rows: Vec<Vec<f32>> = b.to_vec2().unwrap();
    let lat: Vec<f64> =
        rows.iter().map(|r| f64::from(r[1]).atan2(f64::from(r[3])) / std::f64::consts::PI * 90.0).collect();
    let mean_abs_sin: f64 = lat.iter().map(|l| l.to_radians().sin().abs()).sum::<f64>() / lat.len() as f64;
    assert!((mean_abs_sin - 0.5).abs() < 0.02, "{mean_abs_sin}");
    for row in &rows {
        assert!(
            (row[0].powi(2) + row[2].powi(2) - 1.0).abs() < 1e-5
                && (row[4].powi(2) + row[5].powi(2) - 1.0).abs() < 1e-5
        );
    }
}

/// The prior's value for `class` at Dynamic MLP-encoded locations.
fn prior_at(model: &PriorsNet, class: usize, loc: &Tensor) -> Vec<f32> {
    let (inputs, _) = dmlp_baselines::encoding::priorsnet_inputs(loc, Metadata::Geo).unwrap();
    let prior: Vec<Vec<f32>> = model.prior(&inputs).unwrap().to_vec2().unwrap();
    prior.iter().map(|r| r[class]).collect()
}

#[test]
fn a_trained_prior_ranks_presences_in_the_class_region_above_background_points() {
    let tmp = tempfile::tempdir().unwrap();
    let model = PriorsNet::new(4, 3, 0.5, 7, &Device::Cpu).unwrap();
    let train = presences(80, 1);
    let val = presences(20, 2);
    let run = RunDir::create(tmp.path()).unwrap();
    let metrics = train_priorsnet(&model, &config(12), &train, &val, &run, false, &mut Silent).unwrap().metrics;
    assert_eq!(metrics.len(), 12);
    assert!(metrics.last().unwrap().val_top1 > 95.0, "{:?}", metrics.last());
    // Held-out presences of each class against uniform background points: AUC near 1.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let background: Vec<f32> = (0..300)
        .flat_map(|_| {
            let obs =
                Observation::new(Some(rng.random_range(-90.0..90.0)), Some(rng.random_range(-180.0..180.0)), None)
                    .unwrap();
            obs.encode(Metadata::Geo).into_iter().map(|v| v as f32).collect::<Vec<_>>()
        })
        .collect();
    let background = Tensor::from_vec(background, (300, 4), &Device::Cpu).unwrap();
    let held_out = presences(20, 11);
    for class in 0..3 {
        let rows: Vec<u32> =
            (0..held_out.labels.len() as u32).filter(|&i| held_out.labels[i as usize] == class as u32).collect();
        let index = Tensor::from_vec(rows.clone(), rows.len(), &Device::Cpu).unwrap();
        // Back to Dynamic MLP's column order for prior_at: [sin lat, sin lon, cos lat, cos lon].
        let own = held_out.inputs.index_select(&index, 0).unwrap();
        let own = own.index_select(&Tensor::new(&[1u32, 0, 3, 2], &Device::Cpu).unwrap(), 1).unwrap();
        let present = prior_at(&model, class, &own);
        let absent = prior_at(&model, class, &background);
        let pairs = present.iter().flat_map(|p| absent.iter().map(move |a| (p, a)));
        let above = pairs.clone().filter(|(p, a)| p > a).count() as f64 / pairs.count() as f64;
        assert!(above > 0.9, "class {class}: presences above background in {above:.3} of pairs");
    }
}

/// Every variable's values as bits, by name.
fn weights(vars: &[(String, candle_core::Var)]) -> Vec<(String, Vec<u32>)> {
    let mut out: Vec<(String, Vec<u32>)> = vars
        .iter()
        .map(|(n, v)| {
            let values: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
            (n.clone(), values.iter().map(|x| x.to_bits()).collect())
        })
        .collect();
    out.sort();
    out
}

fn reproducible(metrics: &[EpochMetrics]) -> Vec<(usize, u64, u64, u64)> {
    metrics.iter().map(|m| (m.epoch, m.train_loss.to_bits(), m.val_loss.to_bits(), m.val_top1.to_bits())).collect()
}

#[test]
fn a_resumed_prior_repeats_the_uninterrupted_run() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (train, val) = (presences(30, 1), presences(10, 2));
    let whole = PriorsNet::new(4, 3, 0.5, 7, &Device::Cpu).unwrap();
    let straight_run = RunDir::create(a.path()).unwrap();
    let straight = train_priorsnet(&whole, &config(3), &train, &val, &straight_run, false, &mut Silent).unwrap();
    let first = PriorsNet::new(4, 3, 0.5, 7, &Device::Cpu).unwrap();
    let run = RunDir::create(b.path()).unwrap();
    train_priorsnet(&first, &config(2), &train, &val, &run, false, &mut Silent).unwrap();
    let again = PriorsNet::new(4, 3, 0.5, 99, &Device::Cpu).unwrap(); // weights come from the checkpoint
    let resumed = train_priorsnet(&again, &config(3), &train, &val, &run, true, &mut Silent).unwrap();
    assert_eq!(reproducible(&resumed.metrics), reproducible(&straight.metrics));
    assert_eq!(reproducible(&run.read_metrics().unwrap()), reproducible(&straight.metrics));
    assert_eq!(weights(&again.store().vars()), weights(&whole.store().vars()), "the same weights, bit for bit");
    let err = train_priorsnet(&again, &config(3), &train, &val, &run, false, &mut Silent).unwrap_err();
    assert!(err.to_string().contains("already holds a run"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    let err =
        train_priorsnet(&again, &config(3), &train, &val, &RunDir::create(empty.path()).unwrap(), true, &mut Silent)
            .unwrap_err();
    assert!(err.to_string().contains("holds no checkpoint"), "{err}");
}

#[test]
fn geonet_starts_as_the_image_model_and_learns_from_the_location() {
    let device = Device::Cpu;
    for fusion in [GeoNetFusion::Concat, GeoNetFusion::Add] {
        let config = GeoNetConfig { fusion, lr: 0.05, ..GeoNetConfig::default() };
        let model = GeoNet::new(3, 4, &config, &device).unwrap();
        let data = presences(20, 4);
        // The "image model" cannot tell the classes apart: equal logits. Dynamic MLP order again.
        let loc = data.inputs.index_select(&Tensor::new(&[1u32, 0, 3, 2], &device).unwrap(), 1).unwrap();
        let z = Tensor::zeros((data.labels.len(), 3), DType::F32, &device).unwrap();
        let targets = Tensor::from_vec(data.labels.clone(), data.labels.len(), &device).unwrap();
        if fusion == GeoNetFusion::Concat {
            let zr = Tensor::randn(0f32, 1.0, (data.labels.len(), 3), &device).unwrap();
            let out = model.forward_t(&zr, &loc, false).unwrap();
            assert_eq!(out.to_vec2::<f32>().unwrap(), zr.to_vec2::<f32>().unwrap());
        }
        let mut sgd = dmlp_train::Sgd::new(
            model.store().trainable_vars(),
            dmlp_train::SgdConfig { momentum: 0.9, weight_decay: 0.0, nesterov: false },
        );
        // Strict: the target's logit above every other (ties count against).
        let accuracy = |m: &GeoNet| {
            let rows = dmlp_eval::score_rows(&m.forward_t(&z, &loc, false).unwrap()).unwrap();
            let hits = rows
                .iter()
                .zip(&data.labels)
                .filter(|(r, t)| r.iter().enumerate().all(|(j, v)| j == **t as usize || *v < r[**t as usize]))
                .count();
            hits as f64 / data.labels.len() as f64
        };
        if fusion == GeoNetFusion::Concat {
            assert_eq!(accuracy(&model), 0.0, "equal image logits and a zero location block: all ties");
        }
        for _ in 0..60 {
            let out = model.forward_t(&z, &loc, true).unwrap();
            let loss = dmlp_train::label_smoothing_loss(&out, &targets, 0.1).unwrap();
            sgd.step(&loss.backward().unwrap(), config.lr).unwrap();
        }
        assert!(accuracy(&model) > 0.95, "{fusion:?}: {}", accuracy(&model));
    }
}

/// Fixed batches of random images with locations; the same batches every epoch, in an order
/// that depends on the epoch.
struct MemorySource {
    batches: Vec<dmlp_eval::TensorBatch>,
}

impl dmlp_eval::BatchSource for MemorySource {
    fn batches_per_epoch(&self) -> usize {
        self.batches.len()
    }

    fn len(&self) -> usize {
        self.batches.iter().map(|b| b.targets.dim(0).unwrap()).sum()
    }

    fn epoch(
        &self,
        epoch: usize,
    ) -> Result<Box<dyn Iterator<Item = Result<dmlp_eval::TensorBatch, dmlp_eval::EvalError>> + '_>, dmlp_eval::EvalError>
    {
        let n = self.batches.len();
        Ok(Box::new((0..n).map(move |i| Ok(self.batches[(i + epoch) % n].clone()))))
    }
}

fn memory_source(batches: usize, seed: u64) -> MemorySource {
    let device = Device::Cpu;
    let data = presences(batches * 3, seed);
    let loc = data.inputs.index_select(&Tensor::new(&[1u32, 0, 3, 2], &device).unwrap(), 1).unwrap();
    let n = data.labels.len() / batches;
    let batches = (0..batches)
        .map(|b| {
            let images = Tensor::randn(0f32, 1.0, (n, 3, 8, 8), &device).unwrap();
            let targets = Tensor::from_vec(data.labels[b * n..(b + 1) * n].to_vec(), n, &device).unwrap();
            dmlp_eval::TensorBatch::single(images, Some(loc.narrow(0, b * n, n).unwrap()), targets)
        })
        .collect();
    MemorySource { batches }
}

#[test]
fn a_resumed_geonet_repeats_the_uninterrupted_run() {
    use dmlp_baselines::geonet::train_geonet;
    let device = Device::Cpu;
    let image_config = dmlp_model::ModelConfig::image_only(
        dmlp_backbones::BackboneSpec::Custom(dmlp_backbones::CustomBackbone::Resnet {
            block: dmlp_backbones::BlockKind::Basic,
            layers: vec![1, 1, 1, 1],
            width: 4,
        }),
        3,
    );
    let image = dmlp_model::Classifier::new(&image_config, 1, &device).unwrap();
    let (train, val) = (memory_source(3, 1), memory_source(1, 2));
    let config = |epochs| GeoNetConfig { epochs, lr: 0.05, ..GeoNetConfig::default() };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let whole = GeoNet::new(3, 4, &config(3), &device).unwrap();
    let straight =
        train_geonet(&whole, &image, &config(3), &train, &val, &RunDir::create(a.path()).unwrap(), false, &mut Silent)
            .unwrap();
    let run = RunDir::create(b.path()).unwrap();
    let first = GeoNet::new(3, 4, &config(2), &device).unwrap();
    train_geonet(&first, &image, &config(2), &train, &val, &run, false, &mut Silent).unwrap();
    // A run killed after its checkpoint but before its metrics files: the checkpoint carries them.
    std::fs::remove_file(run.metrics_jsonl()).unwrap();
    std::fs::remove_file(run.metrics_csv()).unwrap();
    let again = GeoNet::new(3, 4, &GeoNetConfig { seed: 99, ..config(3) }, &device).unwrap();
    let resumed = train_geonet(&again, &image, &config(3), &train, &val, &run, true, &mut Silent).unwrap();
    assert_eq!(resumed.metrics.len(), 3);
    assert_eq!(reproducible(&resumed.metrics), reproducible(&straight.metrics));
    assert_eq!(reproducible(&run.read_metrics().unwrap()), reproducible(&straight.metrics));
    assert_eq!(weights(&again.store().vars()), weights(&whole.store().vars()));
}
