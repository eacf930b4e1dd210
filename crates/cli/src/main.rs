//! `dmlp`, the command line of the dmlp toolkit.
//!
//! Subcommands: `train` (a run from a config, resumable), `eval` (a checkpoint on the validation
//! split, with ten-crop and multi-scale tests; several checkpoints: their ensemble), `predict` (a
//! run on your own photos, with their EXIF location and date), `prior` (a PriorsNet baseline's
//! classes at a place, or a class's range map), `figure` (the supplement's figures),
//! `baseline` (PriorsNet or GeoNet on an image-only
//! run), `data synth` (the synthetic geo-aware dataset), `data verify` (a dataset folder against
//! its annotation files and official counts), `data prepare` (its Parquet manifest), `weights
//! fetch` / `weights show` (pretrained files from the Hub cache or disk), `params`
//! (parameter counts of any backbone × fusion × class count) and `encode` (the location/date
//! encoding of one observation).

mod data;
mod figure;
mod params;
mod predict;
mod prior;
mod run;
mod weights;

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
    /// Train a model from a config file into a run folder (resumable with --resume).
    Train(run::TrainArgs),
    /// Evaluate a checkpoint on the config's validation split.
    Eval(run::EvalArgs),
    /// Name what is in your own photos with a trained run: the top-k classes of each, using the
    /// location and date in its EXIF (or --lat/--lon/--date). Exit status 3: some photos could
    /// not be read (the rest were predicted).
    Predict(predict::PredictArgs),
    /// Train a location baseline (PriorsNet or GeoNet) on top of an image-only run, and evaluate it.
    Baseline(run::BaselineArgs),
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Pretrained weights: download a Hub file into the cache ahead of time, or show what a file
    /// holds and which backbone it fits.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
    },
    /// Ask a trained PriorsNet baseline: the classes likely at --lat/--lon (--date), or where
    /// --class is expected, drawn as a world map (--map).
    Prior(prior::PriorArgs),
    /// The supplement's figures as PNG or SVG: per-class curves (Fig. S4), training curves
    /// (Fig. S2), a dataset's locations (Fig. S1).
    Figure {
        #[command(subcommand)]
        command: figure::FigureCommand,
    },
    /// Print the parameter count of a model, in total and per part.
    Params(params::ParamsArgs),
    /// Print the encoded location vector of one observation, as the model sees it.
    Encode(params::EncodeArgs),
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Write the synthetic geo-aware dataset (iNat 2021 layout).
    Synth(run::SynthArgs),
    /// Compare a dataset folder with its annotation files and official counts; exits non-zero
    /// when a split cannot be read or an image is missing or corrupt.
    Verify(data::VerifyArgs),
    /// Build the Parquet manifest of a dataset's records in the cache folder (never in the
    /// dataset folder); training reads splits from it while it matches the annotation files.
    Prepare(data::PrepareArgs),
    /// Write each image as training decodes it, as DIR/<file stem>.png (full resolution, EXIF
    /// orientation not applied, as PIL's convert("RGB")); exits non-zero if any file failed.
    Decode(data::DecodeArgs),
    /// Print what `dmlp predict` reads from each photo's EXIF (GPS position, date taken,
    /// orientation, and why anything present was not used), one JSON object per line.
    Exif(data::ExifArgs),
}

#[derive(Debug, Subcommand)]
enum WeightsCommand {
    /// Download hf:ORG/NAME[@REVISION]'s model.safetensors into the Hugging Face cache (HF_HOME,
    /// HF_HUB_CACHE), for machines that train offline (HF_HUB_OFFLINE=1).
    Fetch(weights::FetchArgs),
    /// List a weights file's tensors and check it against the backbones it could initialise.
    Show(weights::ShowArgs),
}

fn main() -> ExitCode {
    // Training reuses freed activations instead of page-faulting them in every step.
    dmlp_nn::keep_freed_memory();
    // SAFETY: first thing in main; no other thread exists yet.
    unsafe { dmlp_nn::configure_cpu_threads() };
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Data { command: DataCommand::Verify(args) } => match data::run_verify(&args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(err) => Err(err),
        },
        Command::Data { command: DataCommand::Prepare(args) } => data::run_prepare(&args),
        Command::Data { command: DataCommand::Exif(args) } => match data::run_exif(&args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(err) => Err(err),
        },
        Command::Data { command: DataCommand::Decode(args) } => match data::run_decode(&args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(err) => Err(err),
        },
        Command::Train(args) => run::run_train(&args),
        Command::Eval(args) => run::run_eval(&args),
        Command::Predict(args) => match predict::run_predict(&args) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(code) => return ExitCode::from(code),
            Err(err) => Err(err),
        },
        Command::Baseline(args) => run::run_baseline(&args),
        Command::Data { command: DataCommand::Synth(args) } => run::run_synth(&args),
        Command::Weights { command: WeightsCommand::Fetch(args) } => weights::run_fetch(&args),
        Command::Weights { command: WeightsCommand::Show(args) } => weights::run_show(&args),
        Command::Figure { command } => figure::run_figure(&command),
        Command::Prior(args) => prior::run_prior(&args),
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
