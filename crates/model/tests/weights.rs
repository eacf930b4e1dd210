//! Loading weights: formats, dtypes, and every way a file can fail to fit the model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_fusion::{FusionConfig, FusionKind};
use dmlp_geo::Metadata;
use dmlp_model::{Classifier, LoadPolicy, ModelConfig, ModelDType, ModelError, UnusedKeys, WeightsFile};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join(name)
}

/// A small fused model: ten-layer ResNet of width 8, Dynamic MLP-C of d 16, h 8.
fn small_config(dtype: ModelDType) -> ModelConfig {
    ModelConfig {
        pretrained: None,
        backbone: Some(BackboneSpec::Custom(CustomBackbone::Resnet {
            block: BlockKind::Basic,
            layers: vec![1, 1, 1, 1],
            width: 8,
        })),
        feature_dim: None,
        num_classes: 5,
        metadata: Some(Metadata::GeoTemporal),
        fusion: Some(FusionConfig { mlp_d: 16, mlp_h: 8, ..FusionConfig::with_defaults(FusionKind::DynamicMlpC) }),
        dtype,
    }
}

fn head_config() -> ModelConfig {
    ModelConfig {
        pretrained: None,
        backbone: None,
        feature_dim: Some(4),
        num_classes: 3,
        metadata: None,
        fusion: None,
        dtype: ModelDType::F32,
    }
}

fn save(model: &Classifier, path: &Path, dtype: DType) {
    let tensors: HashMap<String, Tensor> =
        model.store().vars().into_iter().map(|(k, v)| (k, v.as_tensor().to_dtype(dtype).unwrap())).collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
}

fn inputs() -> (Tensor, Tensor) {
    let images = Tensor::randn(0f32, 1.0, (2, 3, 33, 29), &Device::Cpu).unwrap();
    let loc = Tensor::rand(-1f32, 1.0, (2, 6), &Device::Cpu).unwrap();
    (images, loc)
}

fn logits(model: &Classifier, images: &Tensor, loc: &Tensor) -> Vec<f32> {
    let out = model.forward_t(images, Some(loc), false).unwrap();
    out.logits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn safetensors_round_trip_reproduces_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    let a = Classifier::new(&small_config(ModelDType::F32), 1, &Device::Cpu).unwrap();
    save(&a, &path, DType::F32);
    let b = Classifier::new(&small_config(ModelDType::F32), 2, &Device::Cpu).unwrap();
    let (images, loc) = inputs();
    assert_ne!(logits(&a, &images, &loc), logits(&b, &images, &loc));
    let report = WeightsFile::read(&path).unwrap().load_into(b.store(), LoadPolicy::STRICT).unwrap();
    assert_eq!(report.loaded, b.store().vars().len());
    assert_eq!(logits(&a, &images, &loc), logits(&b, &images, &loc));
}

#[test]
fn half_precision_files_load_into_any_model_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    let (images, loc) = inputs();
    for file_dtype in [DType::F16, DType::BF16] {
        let path = tmp.path().join(format!("{file_dtype:?}.safetensors"));
        let a = Classifier::new(&small_config(ModelDType::F32), 1, &Device::Cpu).unwrap();
        save(&a, &path, file_dtype);
        // Round a's own weights the same way, so both compute on identical values.
        WeightsFile::read(&path).unwrap().load_into(a.store(), LoadPolicy::STRICT).unwrap();
        let b = Classifier::new_zeroed(&small_config(ModelDType::F32), &Device::Cpu).unwrap();
        WeightsFile::read(&path).unwrap().load_into(b.store(), LoadPolicy::STRICT).unwrap();
        assert_eq!(logits(&a, &images, &loc), logits(&b, &images, &loc), "{file_dtype:?}");
        // The same weights computed in float16 and bfloat16 land close to the float32 result.
        for (model_dtype, tolerance) in [(ModelDType::F16, 2e-2), (ModelDType::Bf16, 6e-2)] {
            let half = Classifier::new_zeroed(&small_config(model_dtype), &Device::Cpu).unwrap();
            WeightsFile::read(&path).unwrap().load_into(half.store(), LoadPolicy::STRICT).unwrap();
            let (full, half) = (logits(&a, &images, &loc), logits(&half, &images, &loc));
            let err: f32 = full.iter().zip(&half).map(|(x, y)| (x - y).powi(2)).sum::<f32>().sqrt();
            let norm: f32 = full.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(err / norm < tolerance, "{model_dtype:?} compute off by {}", err / norm);
        }
    }
}

fn mismatch_details(err: ModelError) -> String {
    match err {
        ModelError::WeightsMismatch { details, .. } => details,
        other => panic!("expected a mismatch, got {other}"),
    }
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = Classifier::new(&small_config(ModelDType::F32), 1, &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = model.store().tensors();
    tensors.remove("loc_att.norm3.weight");
    tensors.insert("head.extra".to_owned(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    tensors.insert("fc.bias".to_owned(), Tensor::zeros(7, DType::F32, &Device::Cpu).unwrap());
    tensors.insert("layer1.0.bn1.num_batches_tracked".to_owned(), Tensor::new(5i64, &Device::Cpu).unwrap());
    let path = tmp.path().join("bad.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();

    let target = Classifier::new(&small_config(ModelDType::F32), 9, &Device::Cpu).unwrap();
    let before = target.store().get("fc.weight").unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let file = WeightsFile::read(&path).unwrap();
    let err = file.load_into(target.store(), LoadPolicy::STRICT).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("bad.safetensors"), "{message}");
    let details = mismatch_details(err);
    assert!(details.contains("fc.bias: file has shape [7], the model [5]"), "{details}");
    assert!(details.contains("loc_att.norm3.weight"), "{details}");
    assert!(details.contains("head.extra"), "{details}");
    assert!(!details.contains("num_batches_tracked"), "{details}");
    let after = target.store().get("fc.weight").unwrap().as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(before, after, "a failed load must not change the model");

    // Ignoring unused keys and allowing missing ones still refuses a wrong shape.
    let lenient = LoadPolicy { unused_keys: UnusedKeys::Ignore, allow_missing: true };
    let details = mismatch_details(file.load_into(target.store(), lenient).unwrap_err());
    assert!(details.contains("fc.bias") && !details.contains("head.extra"), "{details}");

    // Without the wrong shape, the lenient load reports what it skipped.
    let mut fixed = tensors.clone();
    fixed.insert("fc.bias".to_owned(), Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&fixed, &path).unwrap();
    let report = WeightsFile::read(&path).unwrap().load_into(target.store(), lenient).unwrap();
    assert_eq!(report.missing, vec!["loc_att.norm3.weight".to_owned()]);
    assert_eq!(report.unused, vec!["head.extra".to_owned()]);
}

#[test]
fn pytorch_files_plain_and_wrapped_load() {
    for (name, epoch) in [("plain_state_dict.pth", None), ("state_dict_key.pth", Some(3))] {
        let file = WeightsFile::read(&fixture(name)).unwrap();
        assert_eq!(file.epoch, epoch, "{name}");
        let model = Classifier::new(&head_config(), 0, &Device::Cpu).unwrap();
        file.load_into(model.store(), LoadPolicy::STRICT).unwrap();
        let features = Tensor::new(&[[1f32, 0.0, 0.0, 0.0]], &Device::Cpu).unwrap();
        let out = model.forward_features_t(&features, None, false).unwrap();
        // fc.weight[:, 0] = [0.0, 0.4, 0.8], bias [0.5, -0.5, 0.25].
        let logits: Vec<f32> = out.logits.flatten_all().unwrap().to_vec1().unwrap();
        for (got, want) in logits.iter().zip([0.5f32, -0.1, 1.05]) {
            assert!((got - want).abs() < 1e-3, "{name}: {logits:?}");
        }
    }
}

#[test]
fn unreadable_files_are_errors_naming_the_file() {
    let err = WeightsFile::read(&fixture("legacy.pth")).unwrap_err().to_string();
    assert!(err.contains("legacy.pth") && err.contains("legacy"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let truncated = tmp.path().join("truncated.safetensors");
    let model = Classifier::new(&head_config(), 0, &Device::Cpu).unwrap();
    save(&model, &truncated, DType::F32);
    let bytes = std::fs::read(&truncated).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() - 5]).unwrap();
    let err = WeightsFile::read(&truncated).unwrap_err().to_string();
    assert!(err.contains("truncated.safetensors"), "{err}");
    let err = WeightsFile::read(&tmp.path().join("absent.pth")).unwrap_err().to_string();
    assert!(err.contains("absent.pth"), "{err}");
}

#[test]
fn inputs_of_the_wrong_shape_are_errors() {
    let model = Classifier::new(&small_config(ModelDType::F32), 0, &Device::Cpu).unwrap();
    let (images, loc) = inputs();
    assert!(matches!(model.forward_t(&images, None, false), Err(ModelError::Input(_))));
    let wrong_loc = Tensor::zeros((2, 4), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward_t(&images, Some(&wrong_loc), false).unwrap_err().to_string();
    assert!(err.contains("[2, 4]") && err.contains("geo_temporal"), "{err}");
    assert!(model.forward_t(&loc, Some(&loc), false).is_err());
}

#[test]
fn configs_that_do_not_fit_together_are_refused() {
    let mut config = small_config(ModelDType::F32);
    config.metadata = None;
    assert!(matches!(config.validate(), Err(ModelError::Config(m)) if m.contains("metadata")));
    let mut config = small_config(ModelDType::F32);
    config.fusion = None;
    assert!(config.validate().is_err());
    let mut config = small_config(ModelDType::F32);
    config.num_classes = 0;
    assert!(config.validate().is_err());
    let mut config = small_config(ModelDType::F32);
    config.fusion.as_mut().unwrap().mlp_n = 0;
    assert!(config.validate().is_err());
}

#[test]
fn model_tables_of_toml_files_parse_strictly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("run.toml");
    std::fs::write(
        &path,
        "[model]\nbackbone = \"sk2res2net101\"\nnum_classes = 8142\nmetadata = \"geo_temporal\"\n\n[model.fusion]\ntype = \"dynamic_mlp_c\"\n\n[train]\nepochs = 90\n",
    )
    .unwrap();
    let config = ModelConfig::from_toml_file(&path).unwrap();
    assert_eq!(config.fusion.unwrap().mlp_d, 256);
    std::fs::write(&path, "[model]\nbackbone = \"resnet50\"\nnum_classes = 10\nmlp_d = 3\n").unwrap();
    let err = ModelConfig::from_toml_file(&path).unwrap_err().to_string();
    assert!(err.contains("run.toml") && err.contains("mlp_d"), "{err}");
}

#[test]
fn hostile_pytorch_files_are_errors_naming_the_file() {
    // Made by fixtures/make_pth.py from valid archives: a 2x2 tensor whose pickle claims
    // 65536 x 65536 floats, and a tensor rebuilt from an empty argument tuple (candle's pickle
    // reader panics on it).
    let err = WeightsFile::read(&fixture("hostile_huge_shape.pth")).unwrap_err().to_string();
    assert!(
        err.contains("hostile_huge_shape.pth") && err.contains("fc.weight") && err.contains("claims 17179869184 bytes"),
        "{err}"
    );
    let err = WeightsFile::read(&fixture("hostile_short_args.pth")).unwrap_err().to_string();
    assert!(err.contains("hostile_short_args.pth") && err.contains("malformed pickle"), "{err}");
}

#[test]
fn pickles_that_nest_deeply_or_expand_through_the_memo_are_refused_before_they_are_built() {
    // 200,000 nested lists (400 KB) overflowed the stack inside candle's reader, an abort no
    // `catch_unwind` catches; 40 memo doublings (1 KB) expand into 2^40 objects.
    let err = WeightsFile::read(&fixture("hostile_deep_nesting.pth")).unwrap_err().to_string();
    assert!(err.contains("hostile_deep_nesting.pth") && err.contains("nest more than"), "{err}");
    let err = WeightsFile::read(&fixture("hostile_memo_bomb.pth")).unwrap_err().to_string();
    assert!(err.contains("hostile_memo_bomb.pth") && err.contains("more than"), "{err}");
}
