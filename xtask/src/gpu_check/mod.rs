//! `cargo xtask gpu-check`: everything a GPU machine should run, as one prepared command that
//! prints one report and writes it as JSON: the device; every parity case on the device; every
//! op and two whole training steps against the CPU (`ops`; on CUDA with cuDNN's convolutions,
//! and again on the generic path); ResNet-50 and SK-Res2Net-101 training steps at batch
//! 64 × 224² in f32 and bf16 (images/s, the device synchronised inside the timer, peak memory
//! from `nvidia-smi`), and ResNet-50 bf16 with the generic convolutions, beside PyTorch's on the
//! same GPU in the same run (`xtask/python/gpu_check.py`: f32 with TF32 off, and AMP bf16).
//! With `--profile`, one more step of each configuration is traced (CUPTI, `cupti.rs`; PyTorch's
//! with `torch.profiler`): the kernels that took its device time, by name, side by side.
//!
//! It runs on the CPU too (`--device cpu`, small `--batch`/`--size`), which is how it is tested.

mod calls;
mod cupti;
mod ops;
mod steps;

use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use dmlp_backbones::BackbonePreset;
use dmlp_train::Precision;
use serde::Serialize;

use steps::{StepPlan, StepTiming};

#[derive(Debug, clap::Args)]
pub(crate) struct GpuCheckArgs {
    /// The device to check (cuda:N; `cpu` checks the device-generic path on the CPU).
    #[arg(long, default_value = "cuda:0")]
    device: String,
    /// A Python with PyTorch: the same training steps in PyTorch on the same device.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Where the JSON report goes (default `target/gpu-check.json`; on a GPU machine, `$OUT/…`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images per training step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Image side.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Timed steps per configuration (after the warm-up).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Seconds after which a configuration stops taking timed steps (the whole check must fit
    /// the GPU machine's time).
    #[arg(long, default_value_t = 60.0)]
    budget_s: f64,
    /// Parity case folders (default: the committed cases, and the shared ones where present).
    #[arg(long)]
    parity: Vec<PathBuf>,
    /// After each configuration's timed steps, one more step traced with CUPTI (CUDA; needs
    /// libcupti.so.13, as PyTorch's wheels ship it): the kernels that took its device time.
    #[arg(long)]
    profile: bool,
    /// How many kernel names each profile prints (the JSON keeps them all).
    #[arg(long, default_value_t = 25)]
    profile_top: usize,
    /// Leave out a part: `parity`, `ops`, `nccl`, `calls`, `steps`.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    device: DeviceInfo,
    build: BuildInfo,
    /// The `DMLP_*` switches set in this process (`DMLP_CUDNN=0`, `DMLP_CUDA_LAUNCH_CACHE=0`,
    /// `DMLP_CUDA_STREAM=per-thread`, …): what the figures were measured with.
    switches: std::collections::BTreeMap<String, String>,
    parity: Option<ParitySummary>,
    ops: Option<OpsSummary>,
    /// NCCL's all-reduce on this one device (a group of one, made both ways the trainer makes
    /// them), where the binary has the `nccl` feature: that the library loads and sums.
    nccl: Option<String>,
    /// The host's time per call of each kind a step makes (tiny tensors: the device keeps up).
    calls: Vec<calls::CallCost>,
    steps: Vec<StepTiming>,
    /// How the bf16 steps' BatchNorms ran on cuDNN: in bf16, or converted to f32 (with cuDNN's
    /// reason), or not at all.
    batch_norm_half: Option<String>,
    torch: Option<serde_json::Value>,
    /// dmlp images/s ÷ PyTorch images/s per (model, precision).
    ratios: Vec<Ratio>,
    peak_memory_mib: Option<u64>,
    /// Parts that stopped on an error or a panic (the others still ran).
    errors: Vec<String>,
    wall_s: f64,
}

impl Report {
    /// Writes the report as it stands: after every part, so a run killed or crashed later
    /// (a GPU machine's time limit, a fault in a library) still leaves what it measured.
    fn save(&mut self, out: &std::path::Path, start: Instant) -> anyhow::Result<()> {
        self.wall_s = start.elapsed().as_secs_f64();
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        Ok(dmlp_train::write_atomic(out, serde_json::to_string_pretty(self)?.as_bytes())?)
    }
}

/// The `DMLP_*` variables among `vars` (the process's environment).
fn dmlp_switches(vars: impl Iterator<Item = (String, String)>) -> std::collections::BTreeMap<String, String> {
    vars.filter(|(name, _)| name.starts_with("DMLP_")).collect()
}

/// A part of the check that stopped: printed, and kept in the report.
fn part_failed(report: &mut Report, part: &str, error: anyhow::Error) {
    println!("{part}: ERROR {error:#}");
    report.errors.push(format!("{part}: {error:#}"));
}

/// `f`'s result, with a panic inside it turned into an error (candle panics on some device
/// faults; one failing part must not take the rest of the check with it).
pub(crate) fn caught<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Err(anyhow::anyhow!("panicked: {message}"))
    })
}

#[derive(Debug, Default, Serialize)]
struct DeviceInfo {
    name: String,
    nvidia_smi: Option<String>,
}

#[derive(Debug, Default, Serialize)]
struct BuildInfo {
    version: &'static str,
    release: bool,
    cuda: bool,
    nccl: bool,
    /// cuDNN's version where convolutions go through it, or why they take the generic path.
    cudnn: String,
}

#[derive(Debug, Serialize)]
struct ParitySummary {
    passed: usize,
    failed: usize,
    unsupported: usize,
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct OpsSummary {
    checked: usize,
    failed: Vec<ops::OpCheck>,
    worst: Option<ops::OpCheck>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    model: String,
    precision: String,
    dmlp_images_per_s: f64,
    torch_images_per_s: f64,
    ratio: f64,
}

pub(crate) fn run(args: &GpuCheckArgs) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let device = dmlp_model::parse_device(&args.device)?;
    let skip = |part: &str| args.skip.iter().any(|s| s == part);
    let mut report = Report {
        device: device_info(&args.device),
        build: BuildInfo {
            version: env!("CARGO_PKG_VERSION"),
            release: !cfg!(debug_assertions),
            cuda: cfg!(feature = "cuda"),
            nccl: cfg!(feature = "nccl"),
            cudnn: match dmlp_nn::cudnn_status() {
                Ok(version) if device.is_cuda() => format!("cuDNN {version}"),
                Ok(_) => "not used off CUDA".into(),
                Err(why) => format!("not used: {why}"),
            },
        },
        switches: dmlp_switches(std::env::vars()),
        ..Report::default()
    };
    println!("gpu-check on {} ({})", args.device, report.device.name);
    if !report.switches.is_empty() {
        let set: Vec<String> = report.switches.iter().map(|(name, value)| format!("{name}={value}")).collect();
        println!("switches: {}", set.join(" "));
    }
    let cudnn = device.is_cuda() && dmlp_nn::cudnn_status().is_ok();
    println!(
        "convolutions: {}",
        if cudnn { &report.build.cudnn } else { "the generic path (im2col + matrix products)" }
    );
    if device.is_cuda() && !cudnn {
        println!("  cuDNN {}", report.build.cudnn);
    }
    let out = args.out.clone().unwrap_or_else(|| crate::paths::project_root().join("target").join("gpu-check.json"));
    report.save(&out, start)?;
    let mut healthy = true;

    if !skip("parity") {
        match caught(|| parity(&args.parity, &device)) {
            Ok(summary) => {
                println!(
                    "parity on {}: {} passed, {} failed, {} unsupported",
                    args.device, summary.passed, summary.failed, summary.unsupported
                );
                for failure in &summary.failures {
                    println!("  FAILED {failure}");
                }
                healthy &= summary.failed == 0;
                report.parity = Some(summary);
            }
            Err(error) => {
                healthy = false;
                part_failed(&mut report, "parity", error);
            }
        }
        report.save(&out, start)?;
    }
    if !skip("ops") {
        // On CUDA with cuDNN both convolution paths, each against the CPU.
        let mut checks = Vec::new();
        let paths: &[bool] = if cudnn { &[false, true] } else { &[false] };
        for &generic in paths {
            match caught(|| ops::check(&device, generic)) {
                Ok(found) => checks.extend(found.into_iter().map(|mut check| {
                    if cudnn && generic {
                        check.op.push_str(" [generic path]");
                    }
                    check
                })),
                Err(error) => {
                    healthy = false;
                    part_failed(&mut report, if generic { "ops [generic path]" } else { "ops" }, error);
                }
            }
        }
        let failed: Vec<ops::OpCheck> = checks.iter().filter(|c| !c.ok()).cloned().collect();
        let worst = checks.iter().max_by(|a, b| (a.rel_l2 / a.tol).total_cmp(&(b.rel_l2 / b.tol))).cloned();
        println!("ops against the CPU: {} tensors, {} out of tolerance", checks.len(), failed.len());
        if let Some(w) = &worst {
            println!("  worst: {} / {}: rel_l2 {:.2e} (tol {:.0e})", w.op, w.tensor, w.rel_l2, w.tol);
        }
        for f in &failed {
            match &f.error {
                Some(error) => println!("  FAILED {}: {error}", f.op),
                None => println!("  FAILED {} / {}: rel_l2 {:.2e}", f.op, f.tensor, f.rel_l2),
            }
        }
        healthy &= failed.is_empty();
        report.ops = Some(OpsSummary { checked: checks.len(), failed, worst });
        report.save(&out, start)?;
    }
    if !skip("nccl") && cfg!(feature = "nccl") && device.is_cuda() {
        match caught(|| nccl_check(&device)) {
            Ok(summary) => {
                println!("nccl: {summary}");
                report.nccl = Some(summary);
            }
            Err(error) => {
                healthy = false;
                part_failed(&mut report, "nccl", error);
            }
        }
        report.save(&out, start)?;
    }
    if !skip("calls") {
        match caught(|| calls::measure(&device)) {
            Ok(costs) => {
                let listed: Vec<String> = costs.iter().map(|c| format!("{} {:.1} µs", c.call, c.host_us)).collect();
                println!("host time per call: {}", listed.join(", "));
                report.calls = costs;
            }
            Err(error) => {
                healthy = false;
                part_failed(&mut report, "calls", error);
            }
        }
        report.save(&out, start)?;
    }
    if !skip("steps") {
        let plan = StepPlan {
            batch: args.batch,
            size: args.size,
            warmup: args.warmup,
            steps: args.steps,
            budget_s: args.budget_s,
            profile: args.profile,
        };
        let memory = MemoryWatch::start(&device);
        let mut configurations: Vec<(BackbonePreset, Precision, bool)> = Vec::new();
        for preset in [BackbonePreset::Resnet50, BackbonePreset::Sk2res2net101] {
            for precision in [Precision::F32, Precision::Bf16] {
                configurations.push((preset, precision, false));
            }
        }
        if cudnn {
            // What cuDNN brings: the same step with the generic convolutions.
            configurations.push((BackbonePreset::Resnet50, Precision::Bf16, true));
        }
        for (preset, precision, generic) in configurations {
            let time = || steps::time_training(preset, precision, &device, plan);
            let mut timing = caught(|| Ok(if generic { dmlp_nn::with_generic_ops(time) } else { time() }))
                .unwrap_or_else(|error| StepTiming::failed(preset, precision, plan, &error));
            if generic {
                timing.precision.push_str(" (generic convolutions)");
            }
            match (&timing.images_per_s, &timing.error) {
                (_, Some(error)) => println!("dmlp  {} {}: ERROR {error}", timing.model, timing.precision),
                (Some(rate), None) => println!(
                    "dmlp  {} {} batch {} × {}²: {:.1} images/s ({} steps, {:.3} s/step, host {:.3} s/step, loss {:.3})",
                    timing.model,
                    timing.precision,
                    timing.batch,
                    timing.size,
                    rate,
                    timing.steps,
                    timing.step_s.unwrap_or(0.0),
                    timing.host_s.unwrap_or(f64::NAN),
                    timing.last_loss.unwrap_or(f64::NAN)
                ),
                _ => {}
            }
            if let (Some(forward), Some(backward), Some(rest)) = (timing.forward_s, timing.backward_s, timing.rest_s) {
                println!(
                    "      forward + loss {forward:.3} s, backward {backward:.3} s, the rest of the step {rest:.3} s"
                );
            }
            print_profile(&timing, args.profile_top);
            healthy &= timing.error.is_none();
            report.steps.push(timing);
            report.save(&out, start)?;
        }
        let batch_norm_half = dmlp_nn::cudnn_half_batch_norm_status();
        println!("bf16 BatchNorm on cuDNN: {batch_norm_half}");
        report.batch_norm_half = Some(batch_norm_half);
        report.peak_memory_mib = memory.stop();
        if let Some(peak) = report.peak_memory_mib {
            println!("peak GPU memory (nvidia-smi, the whole process): {peak} MiB");
        }
        if let Some(python) = &args.python {
            match torch_steps(python, args) {
                Ok(torch) => {
                    report.ratios = ratios(&report.steps, &torch);
                    for r in &report.ratios {
                        println!(
                            "torch {} {}: {:.1} images/s; dmlp ÷ torch = {:.2}",
                            r.model, r.precision, r.torch_images_per_s, r.ratio
                        );
                    }
                    for row in torch.get("steps").and_then(|s| s.as_array()).into_iter().flatten() {
                        let field = |name: &str| row.get(name).and_then(serde_json::Value::as_f64);
                        if let (Some(forward), Some(backward), Some(rest)) =
                            (field("forward_s"), field("backward_s"), field("rest_s"))
                        {
                            println!(
                                "torch {} {}: forward + loss {forward:.3} s, backward {backward:.3} s, the rest of the step {rest:.3} s",
                                row.get("model").and_then(|m| m.as_str()).unwrap_or("?"),
                                row.get("precision").and_then(|p| p.as_str()).unwrap_or("?"),
                            );
                        }
                    }
                    for row in torch.get("steps").and_then(|s| s.as_array()).into_iter().flatten() {
                        print_torch_profile(row, args.profile_top);
                    }
                    report.torch = Some(torch);
                }
                Err(e) => {
                    println!("torch: ERROR {e:#}");
                    report.torch = Some(serde_json::json!({ "error": format!("{e:#}") }));
                }
            }
        }
    }
    report.save(&out, start)?;
    println!(
        "gpu-check: {} in {:.0} s; report {}",
        if healthy { "ok" } else { "FAILED" },
        report.wall_s,
        out.display()
    );
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_profile(timing: &StepTiming, top: usize) {
    if let Some(error) = &timing.profile_error {
        println!("      profile: not taken: {error}");
    }
    let Some(profile) = &timing.profile else { return };
    println!(
        "      profile of one step: device busy {:.1} ms over a span of {:.1} ms, {} launches",
        profile.busy_ms, profile.span_ms, profile.launches
    );
    for kernel in profile.kernels.iter().take(top) {
        let name: String = kernel.name.chars().take(110).collect();
        println!(
            "      {:8.2} ms {:5.1} % {:6}×  {name}",
            kernel.device_ms,
            100.0 * kernel.device_ms / profile.busy_ms.max(1e-9),
            kernel.launches
        );
    }
}

fn print_torch_profile(row: &serde_json::Value, top: usize) {
    let Some(profile) = row.get("profile") else { return };
    let number =
        |v: &serde_json::Value, name: &str| v.get(name).and_then(serde_json::Value::as_f64).unwrap_or(f64::NAN);
    let busy = number(profile, "busy_ms");
    println!(
        "torch {} {}: profile of one step: device busy {busy:.1} ms, {} launches",
        row.get("model").and_then(|m| m.as_str()).unwrap_or("?"),
        row.get("precision").and_then(|p| p.as_str()).unwrap_or("?"),
        number(profile, "launches"),
    );
    for kernel in profile.get("kernels").and_then(|k| k.as_array()).into_iter().flatten().take(top) {
        let name: String = kernel.get("name").and_then(|n| n.as_str()).unwrap_or("?").chars().take(110).collect();
        let ms = number(kernel, "device_ms");
        println!("      {ms:8.2} ms {:5.1} % {:6}×  {name}", 100.0 * ms / busy.max(1e-9), number(kernel, "launches"));
    }
}

/// NCCL on one GPU: a group of one made as one process's devices are (`ncclCommInitAll`) and
/// as a multi-process job's ranks are (a unique id, `ncclCommInitRank`), each summing two
/// tensors through the trainer's [`dmlp_train::Collective`]; with one rank the sum is the input.
/// Two ranks on one GPU are refused by NCCL, so the sum between GPUs waits for a machine with
/// several.
#[cfg(feature = "nccl")]
fn nccl_check(device: &Device) -> anyhow::Result<String> {
    use dmlp_train::{Collective, NcclCollective};
    let a = candle_core::Tensor::arange(0f32, 1000.0, device)?.affine(0.5, -3.0)?;
    let b = candle_core::Tensor::arange(0f32, 24.0, device)?.reshape((2, 3, 4))?;
    let inputs = [a.clone(), b.clone()];
    let id = dmlp_train::nccl_unique_id().map_err(|e| anyhow::anyhow!("NCCL unique id: {e}"))?;
    let groups = [
        ("ncclCommInitAll", NcclCollective::group(std::slice::from_ref(device))?),
        ("ncclCommInitRank", NcclCollective::group_of_ranks(std::slice::from_ref(device), 0, 1, &id)?),
    ];
    for (how, mut group) in groups {
        let summed = group[0].all_reduce_sum(&inputs)?;
        for (input, output) in inputs.iter().zip(&summed) {
            anyhow::ensure!(
                input.dims() == output.dims(),
                "{how}: shape {:?} came back {:?}",
                input.dims(),
                output.dims()
            );
            let (x, y) = (input.flatten_all()?.to_vec1::<f32>()?, output.flatten_all()?.to_vec1::<f32>()?);
            anyhow::ensure!(x == y, "{how}: the sum over one rank is not its input");
        }
    }
    Ok("one rank, ncclCommInitAll and ncclCommInitRank: all-reduce exact".into())
}

#[cfg(not(feature = "nccl"))]
fn nccl_check(_: &Device) -> anyhow::Result<String> {
    anyhow::bail!("built without the `nccl` feature")
}

fn device_info(name: &str) -> DeviceInfo {
    let index = name.strip_prefix("cuda:").unwrap_or("0");
    let query = Command::new("nvidia-smi")
        .args(["--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader", "-i", index])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let device_name = if name == "cpu" {
        "the CPU (device-generic path)".to_string()
    } else {
        query.as_deref().and_then(|q| q.split(',').next()).unwrap_or("unknown").trim().to_string()
    };
    DeviceInfo { name: device_name, nvidia_smi: query }
}

fn parity(dirs: &[PathBuf], device: &Device) -> anyhow::Result<ParitySummary> {
    let dirs = if dirs.is_empty() {
        let mut dirs = vec![crate::paths::committed_parity_dir()];
        dirs.extend(crate::paths::shared_parity_dirs().unwrap_or_default());
        dirs
    } else {
        dirs.to_vec()
    };
    let reports: Vec<_> =
        crate::parity::collect_case_dirs(&dirs)?.iter().map(|dir| crate::parity::run_case(dir, device)).collect();
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| r.is_failure())
        .map(|r| crate::parity::format_report(r).lines().next().unwrap_or_default().to_string())
        .collect();
    let unsupported = reports.iter().filter(|r| matches!(r.outcome, crate::parity::Outcome::Unsupported(_))).count();
    Ok(ParitySummary {
        passed: reports.len() - failures.len() - unsupported,
        failed: failures.len(),
        unsupported,
        failures,
    })
}

/// Polls `nvidia-smi` for the GPU's memory in use while the steps run; the largest reading.
struct MemoryWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemoryWatch {
    fn start(device: &Device) -> Self {
        let (stop, peak) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let thread = match device.location() {
            candle_core::DeviceLocation::Cuda { gpu_id } => {
                let (stop, peak) = (stop.clone(), peak.clone());
                Some(std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let used = Command::new("nvidia-smi")
                            .args([
                                "--query-gpu=memory.used",
                                "--format=csv,noheader,nounits",
                                "-i",
                                &gpu_id.to_string(),
                            ])
                            .output()
                            .ok()
                            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok());
                        if let Some(used) = used {
                            peak.fetch_max(used, Ordering::Relaxed);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }))
            }
            _ => None,
        };
        Self { stop, peak, thread }
    }

    fn stop(mut self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take()?;
        thread.join().ok()?;
        Some(self.peak.load(Ordering::Relaxed)).filter(|&p| p > 0)
    }
}

fn torch_steps(python: &std::path::Path, args: &GpuCheckArgs) -> anyhow::Result<serde_json::Value> {
    let mut script_args: Vec<String> = vec![
        "--device".into(),
        args.device.clone(),
        "--batch".into(),
        args.batch.to_string(),
        "--size".into(),
        args.size.to_string(),
        "--steps".into(),
        args.steps.to_string(),
        "--warmup".into(),
        args.warmup.to_string(),
        "--budget-s".into(),
        args.budget_s.to_string(),
    ];
    if args.profile {
        script_args.extend(["--profile".into(), "--profile-top".into(), args.profile_top.to_string()]);
    }
    crate::bench::run_python_json(python, "gpu_check.py", &script_args)
}

fn ratios(steps: &[StepTiming], torch: &serde_json::Value) -> Vec<Ratio> {
    let Some(rows) = torch.get("steps").and_then(|s| s.as_array()) else { return Vec::new() };
    steps
        .iter()
        .filter_map(|ours| {
            let theirs = rows.iter().find(|row| {
                row.get("model").and_then(|m| m.as_str()) == Some(ours.model.as_str())
                    && row.get("precision").and_then(|p| p.as_str()) == Some(ours.precision.as_str())
            })?;
            let torch_rate = theirs.get("images_per_s")?.as_f64()?;
            let dmlp_rate = ours.images_per_s?;
            Some(Ratio {
                model: ours.model.clone(),
                precision: ours.precision.clone(),
                dmlp_images_per_s: dmlp_rate,
                torch_images_per_s: torch_rate,
                ratio: dmlp_rate / torch_rate,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_a_part_is_an_error_with_its_message() {
        let error = caught::<()>(|| panic!("device fault {}", 7)).unwrap_err();
        assert_eq!(error.to_string(), "panicked: device fault 7");
        assert_eq!(caught(|| Ok(3)).unwrap(), 3);
    }

    /// The whole check on the CPU, as `cargo xtask gpu-check --device cpu` runs it (small):
    /// every part reports, and the report on disk is whole JSON with no partial file beside it.
    #[test]
    fn the_check_runs_on_the_cpu_and_leaves_one_whole_report() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("gpu-check.json");
        let args = GpuCheckArgs {
            device: "cpu".into(),
            python: None,
            out: Some(out.clone()),
            batch: 2,
            size: 32,
            steps: 1,
            warmup: 0,
            budget_s: 30.0,
            parity: vec![crate::paths::committed_parity_dir()],
            profile: false,
            profile_top: 25,
            skip: vec![],
        };
        assert_eq!(run(&args).unwrap(), ExitCode::SUCCESS);
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(report["errors"], serde_json::json!([]));
        assert!(report["switches"].is_object(), "{}", report["switches"]);
        assert_eq!(report["parity"]["failed"], 0);
        assert!(report["parity"]["passed"].as_u64().unwrap() > 0);
        assert!(report["ops"]["checked"].as_u64().unwrap() > 100);
        let steps = report["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 4, "ResNet-50 and SK-Res2Net-101, f32 and bf16");
        for step in steps {
            assert!(step["images_per_s"].as_f64().unwrap() > 0.0, "{step}");
        }
        let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(files, ["gpu-check.json"]);
    }

    #[test]
    fn the_report_names_the_dmlp_switches_set_and_nothing_else() {
        let vars = [("DMLP_CUDNN", "0"), ("PATH", "/bin"), ("DMLP_CUDA_STREAM", "per-thread"), ("CUDA_HOME", "/x")];
        let switches = dmlp_switches(vars.into_iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let listed: Vec<(&str, &str)> = switches.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(listed, [("DMLP_CUDA_STREAM", "per-thread"), ("DMLP_CUDNN", "0")]);
    }

    /// `.ci/gpu-check.sh` with a stand-in for the carried binary that crashes (SIGSEGV) unless
    /// cuDNN is off: the script runs it again without cuDNN, parity left out, into its own
    /// report, then the smoke training on the device, and exits with the crash's status.
    #[test]
    fn the_gpu_script_reruns_a_crashed_check_without_cudnn() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".ci")).unwrap();
        std::fs::create_dir_all(root.join("target/gpu-carry")).unwrap();
        let script = crate::paths::project_root().join(".ci/gpu-check.sh");
        std::fs::copy(script, root.join(".ci/gpu-check.sh")).unwrap();
        let fake = root.join("target/gpu-carry/xtask");
        std::fs::write(
            &fake,
            "#!/usr/bin/env bash\necho \"run cudnn=${DMLP_CUDNN:-on} cache=${DMLP_CUDA_LAUNCH_CACHE:-on} \
             alloc=${DMLP_CUDA_ALLOC_CACHE:-on} $*\"\n\
             [ -n \"${DMLP_CUDNN:-}\" ] || kill -SEGV $$\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let script = |host_ab: &str| {
            let output = std::process::Command::new("bash")
                .arg(".ci/gpu-check.sh")
                .current_dir(root)
                .env("OUT", root.join("out"))
                .env("HOST_AB", host_ab)
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .output()
                .unwrap();
            (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
        };
        let (status, stdout) = script("0");
        assert_eq!(status, Some(139), "{stdout}");
        let runs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("run ")).collect();
        assert_eq!(runs.len(), 4, "{stdout}");
        assert!(
            runs[0].starts_with("run cudnn=on cache=on alloc=on gpu-check") && runs[0].contains("--parity"),
            "{stdout}"
        );
        assert!(runs[0].contains("out/gpu-check.json"), "{stdout}");
        assert!(
            runs[1].starts_with("run cudnn=0 cache=on alloc=on gpu-check") && runs[1].contains("--skip parity"),
            "{stdout}"
        );
        assert!(runs[1].contains("out/gpu-check-generic.json"), "{stdout}");
        // The host's cost per step: the steps alone at batch 2 × 32², their own report; its
        // crash is reported, and the first run's status stays the script's.
        assert!(
            runs[2].starts_with("run cudnn=on cache=on alloc=on gpu-check")
                && runs[2].contains("--skip parity,ops,nccl"),
            "{stdout}"
        );
        assert!(runs[2].contains("--batch 2 --size 32") && runs[2].contains("out/gpu-check-host.json"), "{stdout}");
        assert!(stdout.contains("gpu-check at batch 2 × 32² (the host's cost per step): exit status 139"), "{stdout}");
        assert!(runs[3].starts_with("run cudnn=on cache=on alloc=on smoke-train --device cuda:0"), "{stdout}");
        // HOST_AB=1: the small steps twice more, with the launch caches off and with the
        // allocation cache off, each into its own report.
        let (status, stdout) = script("1");
        assert_eq!(status, Some(139), "{stdout}");
        let runs: Vec<&str> = stdout.lines().filter(|l| l.starts_with("run ")).collect();
        assert_eq!(runs.len(), 6, "{stdout}");
        assert!(
            runs[3].starts_with("run cudnn=on cache=0 alloc=on gpu-check") && runs[3].contains("--batch 2"),
            "{stdout}"
        );
        assert!(runs[3].contains("out/gpu-check-host-uncached.json"), "{stdout}");
        assert!(
            runs[4].starts_with("run cudnn=on cache=on alloc=0 gpu-check") && runs[4].contains("--batch 2"),
            "{stdout}"
        );
        assert!(runs[4].contains("out/gpu-check-host-noalloc.json"), "{stdout}");
        assert!(runs[5].starts_with("run cudnn=on cache=on alloc=on smoke-train"), "{stdout}");
    }
}
