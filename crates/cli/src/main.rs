//! `dmlp`, the command line of the dmlp toolkit.
//!
//! Subcommands so far: `params` (parameter counts of any backbone × fusion × class count) and
//! `encode` (the location/date encoding of one observation). Training, evaluation, prediction
//! and dataset tools join as their crates land.

mod params;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "dmlp", version, about = "Fine-grained image classification with location and date (Dynamic MLP)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the parameter count of a model, in total and per part.
    Params(params::ParamsArgs),
    /// Print the encoded location vector of one observation, as the model sees it.
    Encode(params::EncodeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Params(args) => params::run_params(&args),
        Command::Encode(args) => params::run_encode(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
