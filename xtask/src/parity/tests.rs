//! The reference fixtures, run under `cargo test`, and the runner's own behaviour on hand-made
//! cases (it must fail where the numbers differ, and report what it cannot read).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use dmlp_fusion::{FusionConfig, FusionHead, FusionKind};
use dmlp_nn::ParamStore;

use super::{Outcome, collect_case_dirs, format_report, run_case};

/// The cases under `dirs` whose `case.json` has `kind`.
fn cases_of_kind(dirs: &[PathBuf], kind: &str) -> Vec<PathBuf> {
    collect_case_dirs(dirs)
        .expect("listing the fixtures")
        .into_iter()
        .filter(|case| {
            let text = std::fs::read_to_string(case.join("case.json")).unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|v| v["kind"] == kind)
        })
        .collect()
}

/// The shared fixture cases whose `case.json` has `kind`, or `None` when the shared folder is not
/// beside this checkout (a clone on its own still checks parity through the committed cases).
fn fixture_cases(kind: &str) -> Option<Vec<PathBuf>> {
    let dirs = match crate::paths::shared_parity_dirs() {
        Ok(dirs) => dirs,
        Err(err) => {
            eprintln!("the shared reference cases are not run here ({err:#}); the committed cases are");
            return None;
        }
    };
    let cases = cases_of_kind(&dirs, kind);
    assert!(!cases.is_empty(), "no {kind} cases among the shared fixtures");
    Some(cases)
}

fn assert_cases_pass(cases: &[PathBuf]) {
    let mut failures = Vec::new();
    for case in cases {
        let report = run_case(case, &Device::Cpu);
        eprint!("{}", format_report(&report));
        if !matches!(report.outcome, Outcome::Passed(_)) {
            failures.push(format_report(&report));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join(""));
}

fn assert_all_pass(kind: &str, name_filter: impl Fn(&Path) -> bool) {
    let Some(cases) = fixture_cases(kind) else {
        return;
    };
    let cases: Vec<PathBuf> = cases.into_iter().filter(|c| name_filter(c)).collect();
    assert!(!cases.is_empty(), "no {kind} case matched");
    assert_cases_pass(&cases);
}

/// The committed cases: always present, never skipped.
#[test]
fn committed_parity_cases_pass() {
    let dir = crate::paths::committed_parity_dir();
    let cases = collect_case_dirs(&[dir]).expect("the committed parity cases");
    for kind in ["encoding", "fusion", "model", "train_step", "pretrained"] {
        assert!(!cases_of_kind(&cases, kind).is_empty(), "no committed {kind} case");
    }
    assert_cases_pass(&cases);
}

/// Table S1's transformers (Swin, PVT v2), computed by timm.
#[test]
fn reference_transformer_cases_pass() {
    assert_all_pass("model", |case| case.parent().is_some_and(|dir| dir.ends_with("parity-transformers")));
}

#[test]
fn reference_priorsnet_step_cases_pass() {
    assert_all_pass("priorsnet_step", |_| true);
}

#[test]
fn reference_encoding_cases_pass() {
    assert_all_pass("encoding", |_| true);
}

#[test]
fn reference_fusion_cases_pass() {
    assert_all_pass("fusion", |_| true);
}

#[test]
fn reference_checkpoint_cases_pass() {
    assert_all_pass("checkpoint", |_| true);
}

#[test]
fn reference_resnet_model_cases_pass() {
    assert_all_pass("model", |case| case.to_string_lossy().contains("resnet"));
}

#[test]
fn reference_sk2res2net_model_cases_pass() {
    assert_all_pass("model", |case| !case.to_string_lossy().contains("resnet"));
}

#[test]
fn reference_pretrained_cases_pass() {
    assert_all_pass("pretrained", |_| true);
}

#[test]
fn reference_train_step_cases_pass() {
    assert_all_pass("train_step", |_| true);
}

/// A fusion case made here: weights from a seeded head, its own outputs as the expected values
/// (scaled by `expected_scale`).
fn write_fusion_case(dir: &Path, expected_scale: f64) {
    let config = FusionConfig { mlp_d: 16, mlp_h: 8, mlp_n: 2, ..FusionConfig::with_defaults(FusionKind::DynamicMlpB) };
    let store = ParamStore::new(3);
    let head =
        FusionHead::new(32, 4, &config, dmlp_nn::DropoutRng::new(0), store.var_builder(DType::F32, &Device::Cpu))
            .unwrap();
    let weights: HashMap<String, Tensor> = store.tensors();
    candle_core::safetensors::save(&weights, dir.join("weights.safetensors")).unwrap();
    let features = Tensor::randn(0f32, 1.0, (3, 32), &Device::Cpu).unwrap();
    let loc = Tensor::rand(-1f32, 1.0, (3, 4), &Device::Cpu).unwrap();
    let out = head.forward_t(&features, &loc, false).unwrap();
    let inputs = HashMap::from([("image_features".to_owned(), features), ("loc".to_owned(), loc)]);
    candle_core::safetensors::save(&inputs, dir.join("inputs.safetensors")).unwrap();
    let expected = HashMap::from([
        ("loc_features".to_owned(), (out.loc_features * expected_scale).unwrap()),
        ("fused".to_owned(), (out.fused * expected_scale).unwrap()),
    ]);
    candle_core::safetensors::save(&expected, dir.join("expected.safetensors")).unwrap();
    let case = serde_json::json!({
        "kind": "fusion", "metadata": "geo", "image_features_dim": 32,
        "fusion": {"type": "dynamic_mlp_b", "mlp_d": 16, "mlp_h": 8, "mlp_n": 2},
        "weights": "weights.safetensors", "inputs": "inputs.safetensors", "expected": "expected.safetensors",
        "tolerance": {"rel_l2": 1e-4}
    });
    std::fs::write(dir.join("case.json"), case.to_string()).unwrap();
}

#[test]
fn runner_passes_matching_numbers_and_fails_different_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::create_dir_all(&bad).unwrap();
    write_fusion_case(&good, 1.0);
    write_fusion_case(&bad, 1.001);
    assert!(matches!(run_case(&good, &Device::Cpu).outcome, Outcome::Passed(_)));
    let report = run_case(&bad, &Device::Cpu);
    assert!(matches!(report.outcome, Outcome::Failed(_)), "{}", format_report(&report));
    assert!(format_report(&report).contains("FAIL"));
}

#[test]
fn runner_reports_unknown_kinds_and_unreadable_cases() {
    let tmp = tempfile::tempdir().unwrap();
    let unknown = tmp.path().join("unknown");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::write(unknown.join("case.json"), r#"{"kind": "telepathy"}"#).unwrap();
    let report = run_case(&unknown, &Device::Cpu);
    assert!(report.is_failure());
    assert!(format_report(&report).contains("unknown case kind \"telepathy\""));

    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("case.json"), "{not json").unwrap();
    assert!(run_case(&broken, &Device::Cpu).is_failure());

    let no_weights = tmp.path().join("no-weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    write_fusion_case(&no_weights, 1.0);
    std::fs::remove_file(no_weights.join("weights.safetensors")).unwrap();
    let report = run_case(&no_weights, &Device::Cpu);
    assert!(report.is_failure());
    assert!(format_report(&report).contains("weights.safetensors"), "{}", format_report(&report));

    // A training step asking for an optimiser dmlp does not have is reported, not failed.
    let train = tmp.path().join("train");
    std::fs::create_dir_all(&train).unwrap();
    let case = serde_json::json!({
        "kind": "train_step", "backbone": null, "fusion": null, "metadata": null, "num_classes": 3,
        "weights": "w.safetensors", "inputs": "i.safetensors", "expected": "e.safetensors",
        "mixup_lambda": 0.5, "label_smoothing": 0.1, "dropout": "disabled", "steps": 1,
        "optimizer": {"kind": "lamb", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
        "tolerance": {"losses_max_abs": 1e-4, "rel_l2": 1e-4}
    });
    std::fs::write(train.join("case.json"), case.to_string()).unwrap();
    let report = run_case(&train, &Device::Cpu);
    assert!(matches!(report.outcome, Outcome::Unsupported(_)) && !report.is_failure(), "{}", format_report(&report));
    assert!(format_report(&report).contains("lamb"));

    // An incomplete training-step case is unreadable, which fails.
    std::fs::write(train.join("case.json"), r#"{"kind": "train_step"}"#).unwrap();
    assert!(run_case(&train, &Device::Cpu).is_failure());
}

#[test]
fn case_folders_expand_and_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    for name in ["b", "a"] {
        std::fs::create_dir_all(tmp.path().join(name)).unwrap();
        std::fs::write(tmp.path().join(name).join("case.json"), "{}").unwrap();
    }
    let dirs = collect_case_dirs(&[tmp.path().to_path_buf()]).unwrap();
    assert_eq!(dirs, vec![tmp.path().join("a"), tmp.path().join("b")]);
    assert_eq!(collect_case_dirs(&[tmp.path().join("a")]).unwrap(), vec![tmp.path().join("a")]);
    assert!(collect_case_dirs(&[tmp.path().join("missing")]).is_err());
}
