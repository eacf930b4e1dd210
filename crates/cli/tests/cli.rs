//! The `dmlp` binary as a user runs it.

use std::process::Command;

fn dmlp(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dmlp")).args(args).output().expect("running dmlp");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn params_prints_the_parts_of_resnet50_with_dynamic_mlp_c() {
    let (ok, stdout, stderr) = dmlp(&[
        "params",
        "--backbone",
        "resnet50",
        "--fusion",
        "dynamic_mlp_c",
        "--num-classes",
        "8142",
        "--metadata",
        "geo_temporal",
    ]);
    assert!(ok, "{stderr}");
    for expected in ["23,508,032", "593,664", "6,775,232", "16,682,958", "47,559,886", "47.56 M"] {
        assert!(stdout.contains(expected), "{expected} missing from:\n{stdout}");
    }
}

#[test]
fn params_json_and_image_only() {
    let (ok, stdout, stderr) =
        dmlp(&["params", "--backbone", "sk2res2net101", "--fusion", "none", "--num-classes", "100", "--json"]);
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["params"]["backbone"], 46_331_777);
    assert_eq!(json["params"]["loc_net"], 0);
    assert_eq!(json["params"]["total"], 46_331_777 + 204_900);
}

#[test]
fn params_labels_reconstructions_and_rejects_unknown_names() {
    let (ok, stdout, _) = dmlp(&["params", "--fusion", "mul_matched", "--num-classes", "100", "--metadata", "geo"]);
    assert!(ok);
    assert!(stdout.contains("reconstruction"), "{stdout}");
    let (ok, _, stderr) = dmlp(&["params", "--fusion", "dynamic_mlp_d"]);
    assert!(!ok && stderr.contains("dynamic_mlp_d"), "{stderr}");
    let (ok, _, stderr) = dmlp(&["params", "--backbone", "resnet51"]);
    assert!(!ok && stderr.contains("resnet51"), "{stderr}");
}

#[test]
fn encode_prints_the_reference_vector_and_rejects_impossible_dates() {
    let (ok, stdout, stderr) =
        dmlp(&["encode", "--latitude", "44.02901", "--longitude", "-73.17711", "--date", "2011-07-15 00:00:00+00:00"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "[0.999426, -0.957204, 0.230306, 0.033887, 0.289414, 0.973118]");
    let (ok, _, stderr) = dmlp(&["encode", "--latitude", "10", "--longitude", "10", "--date", "2011-02-30"]);
    assert!(!ok && stderr.contains("2011-02-30"), "{stderr}");
    let (ok, _, stderr) = dmlp(&["encode", "--latitude", "95", "--longitude", "10"]);
    assert!(!ok && stderr.contains("95"), "{stderr}");
}
