//! Every size in a run config has an upper bound with a clear message: a huge `image_size`
//! once overflowed a product, and huge widths aborted the process on allocation.

use std::path::Path;

use dmlp_experiment::RunConfig;

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../configs/inat21-mini/resnet50-dmlp-c.toml");

fn refused(overrides: &[&str]) -> String {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    RunConfig::from_file(Path::new(CONFIG), &overrides).unwrap_err().to_string()
}

#[test]
fn the_shipped_config_is_within_every_bound() {
    RunConfig::from_file(Path::new(CONFIG), &[]).unwrap();
}

#[test]
fn oversized_settings_are_refused_naming_the_setting() {
    for (setting, named) in [
        ("data.image_size=4294967295", "data.image_size"),
        ("data.image_size=5000", "data.image_size"),
        ("data.test_scales=[224, 100000]", "data.test_scales"),
        ("data.eval_resize=99999", "data.eval_resize"),
        ("data.workers=100000", "data.workers"),
        ("train.batch_size=1000000000", "batch_size"),
        ("train.epochs=10000000", "epochs"),
        ("train.eval_batch_size=0", "eval_batch_size"),
        ("model.num_classes=100000000", "num_classes"),
        ("model.fusion.mlp_d=100000", "mlp_d"),
        ("model.fusion.mlp_h=20000", "mlp_h"),
        ("model.fusion.mlp_n=1000", "mlp_n"),
    ] {
        let err = refused(&[setting]);
        assert!(err.contains(named), "{setting}: {err}");
    }
    // Each width within bounds, their product (the generated matrix per image) not.
    let err = refused(&["model.fusion.mlp_d=4096", "model.fusion.mlp_h=4096"]);
    assert!(err.contains("mlp_d · mlp_h"), "{err}");
}
