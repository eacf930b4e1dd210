//! With the `cuda` feature: compiles `src/cuda/kernels.cu` to PTX with the CUDA toolkit's nvcc
//! (`$CUDA_ROOT/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, or `nvcc` on the PATH, as candle's own kernels
//! need it) for `compute_$CUDA_COMPUTE_CAP` (80 when unset: PTX the driver compiles for any newer
//! GPU). Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = ["CUDA_ROOT", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|root| PathBuf::from(root).join("bin").join("nvcc"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "src/cuda/kernels.cu", "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("dmlp-nn's cuda feature needs nvcc ({}): {e}", nvcc.display()));
    assert!(status.success(), "nvcc failed on src/cuda/kernels.cu ({status})");
}
