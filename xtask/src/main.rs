//! Project automation, in the cargo-xtask style (<https://github.com/matklad/cargo-xtask>):
//! `cargo xtask reproduce table-s4 [--smoke]` runs a table's experiment matrix,
//! `cargo xtask parity` runs the reference fixtures, `cargo xtask bench model|ops|data` times
//! the model and its ops against PyTorch and the input pipeline against PIL. Orchestration only: the model code lives in the library crates.
//!
//! Path arguments are resolved against the directory the command was started from.

mod bench;
mod bench_data;
mod bench_ops;
mod bench_predict;
mod gpu_check;
mod parity;
mod paths;
mod reproduce;
mod smoke_train;
mod tidy;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "dmlp project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run parity fixture cases (the reference PyTorch implementation's own outputs) and print
    /// each tensor's error beside its tolerance. Without arguments: every case of
    /// `shared/fixtures/parity`.
    Parity {
        /// Case folders (each holds a case.json), or folders of case folders.
        cases: Vec<PathBuf>,
        /// Where to run: cpu or cuda:N.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Run a table's experiment matrix and write results/TABLE.{md,csv}.
    Reproduce(reproduce::ReproduceArgs),
    /// Train a tiny model on tiny synthetic data: it must learn, and resume must be exact (CI).
    SmokeTrain(smoke_train::SmokeTrainArgs),
    /// Everything a GPU machine should run, in one command: parity, ops against the CPU, and
    /// training throughput beside PyTorch; one report and a JSON file.
    GpuCheck(gpu_check::GpuCheckArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
    },
}

fn main() -> ExitCode {
    // Training reuses freed activations instead of page-faulting them in every step.
    dmlp_nn::keep_freed_memory();
    // SAFETY: first thing in main; no other thread exists yet.
    unsafe { dmlp_nn::configure_cpu_threads() };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Parity { cases, device } => parity::run_command(&cases, &device),
        Command::Bench { what } => bench::run(what),
        Command::Reproduce(args) => reproduce::run(&args),
        Command::SmokeTrain(args) => smoke_train::run(&args),
        Command::GpuCheck(args) => gpu_check::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
