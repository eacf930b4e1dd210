//! `[model] pretrained` end to end, with small files made here and no network: a Hugging Face
//! cache hit (symlinks into blobs), a miss offline, a tensor of the wrong shape, a wrapped and
//! prefixed reference checkpoint, a 1000-class `fc` that stays out, and a run whose provenance
//! names the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmlp_backbones::{BackboneSpec, BlockKind, CustomBackbone};
use dmlp_datasets::synth::{SynthConfig, generate};
use dmlp_experiment::{Provenance, RunConfig, RunOptions, load_pretrained, resolve_pretrained, train_run};
use dmlp_model::{Classifier, ModelConfig, SkipReason};
use dmlp_pretrained::HubSettings;
use dmlp_train::Silent;

const COMMIT: &str = "c0ffee0000000000000000000000000000000001";

fn tiny_backbone() -> BackboneSpec {
    BackboneSpec::Custom(CustomBackbone::Resnet { block: BlockKind::Basic, layers: vec![1, 1, 1, 1], width: 8 })
}

fn config(num_classes: usize) -> ModelConfig {
    ModelConfig::image_only(tiny_backbone(), num_classes)
}

fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn snapshot(model: &Classifier) -> HashMap<String, Vec<f32>> {
    model.store().vars().into_iter().map(|(name, var)| (name, values(var.as_tensor()))).collect()
}

/// An ImageNet-style file for the tiny backbone: its tensors from the model built with `seed`, a
/// `num_batches_tracked` per BatchNorm, and a 1000-class `fc`, in float16 as timm stores some.
fn imagenet_file(seed: u64) -> HashMap<String, Tensor> {
    let source = Classifier::new(&config(1000), seed, &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = source
        .store()
        .vars()
        .into_iter()
        .map(|(name, var)| (name, var.as_tensor().to_dtype(DType::F16).unwrap()))
        .collect();
    let batch_norms: Vec<String> =
        tensors.keys().filter_map(|k| k.strip_suffix(".running_mean").map(str::to_owned)).collect();
    for bn in batch_norms {
        tensors.insert(
            format!("{bn}.num_batches_tracked"),
            Tensor::new(&[7i64], &Device::Cpu).unwrap().squeeze(0).unwrap(),
        );
    }
    tensors
}

/// A Hub cache as huggingface_hub writes it: `refs/main`, a snapshot symlink into `blobs/`.
fn hub_cache(root: &Path, repo: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let repo_dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::create_dir_all(repo_dir.join("snapshots").join(COMMIT)).unwrap();
    let tmp = repo_dir.join("blobs").join("incoming");
    candle_core::safetensors::save(tensors, &tmp).unwrap();
    let (sha, _) = dmlp_pretrained::sha256_file(&tmp).unwrap();
    std::fs::rename(&tmp, repo_dir.join("blobs").join(&sha)).unwrap();
    std::os::unix::fs::symlink(
        Path::new("..").join("..").join("blobs").join(&sha),
        repo_dir.join("snapshots").join(COMMIT).join("model.safetensors"),
    )
    .unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), COMMIT).unwrap();
    root.to_owned()
}

#[test]
fn a_cached_hub_file_initialises_the_backbone_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let file = imagenet_file(1);
    let cache = hub_cache(&tmp.path().join("hub"), "org/tiny", &file);
    let model = Classifier::new(&config(1000), 2, &Device::Cpu).unwrap();
    let before = snapshot(&model);

    let weights = resolve_pretrained("hf:org/tiny", &HubSettings::offline(&cache)).unwrap();
    let hub = weights.hub.clone().unwrap();
    assert_eq!((hub.repo.as_str(), hub.revision.as_str(), hub.commit.as_str()), ("org/tiny", "main", COMMIT));
    let blob = std::fs::canonicalize(&weights.path).unwrap();
    assert_eq!(blob.file_name().unwrap().to_str().unwrap(), weights.sha256, "the blob is named by its SHA-256");
    assert!(weights.warnings.is_empty(), "{:?}", weights.warnings);
    let init = load_pretrained(&model, weights).unwrap();

    let backbone = model.backbone_names().unwrap();
    assert_eq!(init.load.loaded, backbone.len());
    assert_eq!(init.load.num_batches_tracked, 12, "bn1, two per block, three downsamples");
    let skipped: Vec<(&str, SkipReason)> = init.load.skipped.iter().map(|(k, r)| (k.as_str(), *r)).collect();
    assert_eq!(skipped, [("fc.bias", SkipReason::ClassifierHead), ("fc.weight", SkipReason::ClassifierHead)]);
    let after = snapshot(&model);
    for (name, value) in &after {
        if backbone.contains(name) {
            assert_eq!(value, &values(&file[name]), "{name} must come from the file");
        } else {
            // The 1000-class fc has the file's shape and must still never be taken.
            assert_eq!(value, &before[name], "{name} must keep its initialisation");
        }
    }
}

#[test]
fn a_revision_resolves_through_its_ref_or_as_a_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = hub_cache(&tmp.path().join("hub"), "org/tiny", &imagenet_file(1));
    for source in [format!("hf:org/tiny@{COMMIT}"), "hf:org/tiny@main".to_owned()] {
        let weights = resolve_pretrained(&source, &HubSettings::offline(&cache)).unwrap();
        assert_eq!(weights.hub.unwrap().commit, COMMIT, "{source}");
    }
    let err = resolve_pretrained("hf:org/tiny@v9", &HubSettings::offline(&cache)).unwrap_err().to_string();
    assert!(err.contains("org/tiny@v9") && err.contains("dmlp weights fetch hf:org/tiny@v9"), "{err}");
}

#[test]
fn a_miss_offline_names_the_repository_the_cache_and_the_fetch_command() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("empty-cache");
    let err = resolve_pretrained("hf:timm/resnet50.tv_in1k", &HubSettings::offline(&cache)).unwrap_err().to_string();
    for needle in [
        "timm/resnet50.tv_in1k",
        cache.to_str().unwrap(),
        "dmlp weights fetch hf:timm/resnet50.tv_in1k",
        "HF_HUB_OFFLINE",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert!(!cache.exists(), "an offline miss creates nothing");
}

#[test]
fn a_tensor_of_the_wrong_shape_fails_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut file = imagenet_file(1);
    file.insert("layer2.0.conv1.weight".into(), Tensor::zeros((16, 8, 1, 1), DType::F16, &Device::Cpu).unwrap());
    file.remove("layer4.0.bn2.running_var");
    let path = tmp.path().join("bad.safetensors");
    candle_core::safetensors::save(&file, &path).unwrap();
    let model = Classifier::new(&config(5), 2, &Device::Cpu).unwrap();
    let before = snapshot(&model);
    let weights = resolve_pretrained(path.to_str().unwrap(), &HubSettings::offline(tmp.path())).unwrap();
    let err = load_pretrained(&model, weights).unwrap_err().to_string();
    for needle in
        ["bad.safetensors", "layer2.0.conv1.weight", "[16, 8, 1, 1]", "layer4.0.bn2.running_var", "dmlp weights show"]
    {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
    assert_eq!(snapshot(&model), before, "a failed load must leave every tensor as it was");
}

#[test]
fn a_file_for_another_backbone_fails_instead_of_loading_part_of_it() {
    // The reference's `strict=False` silently loads what matches; a ResNet-18 file offered to
    // this backbone must fail by name instead.
    let tmp = tempfile::tempdir().unwrap();
    let other = ModelConfig {
        backbone: Some(BackboneSpec::Custom(CustomBackbone::Resnet {
            block: BlockKind::Basic,
            layers: vec![2, 1, 1, 1],
            width: 8,
        })),
        ..config(5)
    };
    let model = Classifier::new(&other, 2, &Device::Cpu).unwrap();
    let path = tmp.path().join("short.safetensors");
    candle_core::safetensors::save(&imagenet_file(1), &path).unwrap();
    let weights = resolve_pretrained(path.to_str().unwrap(), &HubSettings::offline(tmp.path())).unwrap();
    let err = load_pretrained(&model, weights).unwrap_err().to_string();
    assert!(err.contains("missing from the file (10 of") && err.contains("layer1.1.conv1.weight"), "{err}");
}

#[test]
fn a_wrapped_and_prefixed_reference_checkpoint_loads_its_backbone() {
    // {"state_dict": {"module.backbone.<key>", "module.fc.*"}, "epoch": 9}, made by
    // crates/model/tests/fixtures/make_pth.py from a committed parity case's weights.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pth = root.join("crates/model/tests/fixtures/wrapped_reference.pth");
    let plain = candle_core::safetensors::load(
        root.join("xtask/fixtures/parity/model-resnet-w8-dmlp-c/weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let model = Classifier::new(&config(5), 2, &Device::Cpu).unwrap();
    let before = snapshot(&model);
    let weights = resolve_pretrained(pth.to_str().unwrap(), &HubSettings::offline(root.join("no-cache"))).unwrap();
    let init = load_pretrained(&model, weights).unwrap();
    assert_eq!(init.load.stripped_prefix.as_deref(), Some("backbone."));
    assert_eq!(init.load.loaded, model.backbone_names().unwrap().len());
    assert_eq!(init.load.skipped.keys().collect::<Vec<_>>(), ["fc.bias", "fc.weight"]);
    for (name, value) in snapshot(&model) {
        if name.starts_with("fc.") {
            assert_eq!(value, before[&name], "{name}");
        } else {
            // The file holds the parity weights rounded to float16; they were float16-exact.
            assert_eq!(value, values(&plain[&name]), "{name}");
        }
    }
}

#[test]
fn a_run_fails_before_its_folder_exists_offline_and_records_the_file_when_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let synth = SynthConfig::three_classes(4, 2, 20, 3);
    generate(&synth, &data).unwrap();
    let config_path = tmp.path().join("run.toml");
    std::fs::write(
        &config_path,
        format!(
            r#"
[model]
backbone = {{ type = "resnet", block = "basic", layers = [1, 1, 1, 1], width = 8 }}
pretrained = "hf:org/tiny"
num_classes = 3

[data]
root = "{}"
image_size = 16
workers = 1

[train]
epochs = 1
batch_size = 4
lr = 0.01
seed = 5
"#,
            data.display()
        ),
    )
    .unwrap();
    let config = RunConfig::from_file(&config_path, &[]).unwrap();
    let provenance = Provenance { git_commit: None, device: "cpu".into(), command: "test".into() };
    let run_dir = tmp.path().join("run");
    let empty = RunOptions { hub: Some(HubSettings::offline(tmp.path().join("empty"))), ..RunOptions::default() };
    let err = train_run(&config, &run_dir, &[Device::Cpu], empty, &provenance, &mut Silent).unwrap_err().to_string();
    assert!(err.contains("org/tiny") && err.contains("dmlp weights fetch"), "{err}");
    assert!(!run_dir.exists(), "nothing of the run may be written before its weights are found");

    let cache = hub_cache(&tmp.path().join("hub"), "org/tiny", &imagenet_file(1));
    let options = RunOptions { hub: Some(HubSettings::offline(&cache)), ..RunOptions::default() };
    train_run(&config, &run_dir, &[Device::Cpu], options, &provenance, &mut Silent).unwrap();
    let provenance: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("provenance.json")).unwrap()).unwrap();
    let pretrained = &provenance["pretrained"];
    assert_eq!(pretrained["source"], "hf:org/tiny");
    assert_eq!(pretrained["hub"]["commit"], COMMIT);
    let (sha, _) = dmlp_pretrained::sha256_file(Path::new(pretrained["path"].as_str().unwrap())).unwrap();
    assert_eq!(pretrained["sha256"], sha);
    assert_eq!(pretrained["skipped"]["fc.weight"], "classifier_head");
    let config_toml = std::fs::read_to_string(run_dir.join("config.toml")).unwrap();
    assert!(config_toml.contains("pretrained = \"hf:org/tiny\""), "{config_toml}");
}
