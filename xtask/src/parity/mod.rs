//! The parity fixture runner: reads cases in the format of `shared/fixtures/parity/README.md`,
//! computes each with dmlp, and compares with the reference's numbers.
//!
//! Kinds: `encoding`, `fusion`, `model`, `checkpoint`, `train_step` (through the trainer's own
//! `classifier_step`), `priorsnet_step` (through PriorsNet's `Trainable` step), `pretrained`
//! (through `[model] pretrained`'s own resolve-and-load path). A case asking for
//! what is not implemented (another optimiser, other BatchNorm momentum) is reported as
//! unsupported by name without failing the run; an unknown kind or an unreadable case fails it.

mod cases;
mod compare;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use candle_core::Device;

pub(crate) use compare::TensorCheck;

/// How one case ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every check within tolerance.
    Passed(Vec<TensorCheck>),
    /// Some check out of tolerance.
    Failed(Vec<TensorCheck>),
    /// A kind this build cannot run yet, with the reason.
    Unsupported(String),
    /// The case could not be read or computed.
    Error(String),
}

/// One case's report.
#[derive(Debug)]
pub(crate) struct CaseReport {
    pub(crate) dir: PathBuf,
    pub(crate) kind: String,
    pub(crate) outcome: Outcome,
}

impl CaseReport {
    pub(crate) fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_) | Outcome::Error(_))
    }
}

/// `cargo xtask parity [CASE_DIR ...]`: without arguments, the committed cases and every shared
/// parity folder (the shared ones only when the shared folder is found, which is said).
pub(crate) fn run_command(args: &[PathBuf], device: &str) -> anyhow::Result<ExitCode> {
    let device = dmlp_model::parse_device(device)?;
    let dirs = if args.is_empty() {
        let mut dirs = vec![crate::paths::committed_parity_dir()];
        match crate::paths::shared_parity_dirs() {
            Ok(shared) => dirs.extend(shared),
            Err(err) => println!("only the committed cases: {err:#}"),
        }
        dirs
    } else {
        args.to_vec()
    };
    let case_dirs = collect_case_dirs(&dirs)?;
    let reports: Vec<CaseReport> = case_dirs.iter().map(|dir| run_case(dir, &device)).collect();
    for report in &reports {
        print!("{}", format_report(report));
    }
    let failed = reports.iter().filter(|r| r.is_failure()).count();
    let unsupported = reports.iter().filter(|r| matches!(r.outcome, Outcome::Unsupported(_))).count();
    let passed = reports.len() - failed - unsupported;
    println!("parity: {passed} passed, {failed} failed, {unsupported} unsupported");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Expands the arguments into case folders: a folder with a `case.json` is a case; any other
/// folder contributes its sub-folders that have one. Paths resolve against the current directory.
pub(crate) fn collect_case_dirs(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for arg in args {
        let dir = std::path::absolute(arg).with_context(|| format!("resolving {}", arg.display()))?;
        if !dir.is_dir() {
            anyhow::bail!("{} is not a directory", arg.display());
        }
        if dir.join("case.json").is_file() {
            out.push(dir);
            continue;
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.join("case.json").is_file())
            .collect();
        if children.is_empty() {
            anyhow::bail!("{} holds no case.json, and none of its folders does", arg.display());
        }
        children.sort();
        out.extend(children);
    }
    Ok(out)
}

/// Runs one case; never panics on bad input, reports it.
pub(crate) fn run_case(dir: &Path, device: &Device) -> CaseReport {
    let (kind, outcome) = match cases::load_and_run(dir, device) {
        Ok((kind, outcome)) => (kind, outcome),
        Err((kind, err)) => (kind, Outcome::Error(format!("{err:#}"))),
    };
    CaseReport { dir: dir.to_path_buf(), kind, outcome }
}

pub(crate) fn format_report(report: &CaseReport) -> String {
    let name =
        report.dir.file_name().map_or_else(|| report.dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut out = String::new();
    let (status, checks) = match &report.outcome {
        Outcome::Passed(checks) => ("PASS", Some(checks)),
        Outcome::Failed(checks) => ("FAIL", Some(checks)),
        Outcome::Unsupported(why) => {
            out.push_str(&format!("UNSUPPORTED  {name} [{}]: {why}\n", report.kind));
            return out;
        }
        Outcome::Error(err) => {
            out.push_str(&format!("ERROR  {name} [{}] ({}): {err}\n", report.kind, report.dir.display()));
            return out;
        }
    };
    out.push_str(&format!("{status}  {name} [{}]\n", report.kind));
    for check in checks.into_iter().flatten() {
        out.push_str(&format!("    {check}\n"));
    }
    out
}

#[cfg(test)]
mod tests;
