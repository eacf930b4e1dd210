//! The terminal observer of a run: a progress bar per epoch (rate and ETA) on standard error and
//! one summary line per epoch. The library crates print nothing; `dmlp` and `cargo xtask` attach
//! this.

use std::path::Path;

use dmlp_train::{EpochMetrics, FitObserver};
use indicatif::{ProgressBar, ProgressStyle};

/// Progress bars and epoch lines, labelled (e.g. `prior`, `geonet`, or nothing for the classifier).
#[derive(Debug)]
pub struct ProgressBars {
    label: String,
    bar: Option<ProgressBar>,
}

impl ProgressBars {
    pub fn new(label: &str) -> Self {
        Self { label: label.to_owned(), bar: None }
    }

    fn prefix(&self) -> String {
        if self.label.is_empty() { String::new() } else { format!("{} ", self.label) }
    }
}

impl FitObserver for ProgressBars {
    fn resumed(&mut self, run: &Path, after_epoch: usize) {
        eprintln!("{}resuming {} after epoch {after_epoch}", self.prefix(), run.display());
    }

    fn epoch_started(&mut self, epoch: usize, epochs: usize, items: usize) {
        let bar = ProgressBar::new(items as u64);
        let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{}epoch {epoch}/{epochs}", self.prefix()));
        self.bar = Some(bar);
    }

    fn step_finished(&mut self, items: usize, mean_loss: f64, lr: f64) {
        if let Some(bar) = &self.bar {
            bar.inc(items as u64);
            bar.set_message(format!("loss {mean_loss:.4} lr {lr:.5}"));
        }
    }

    fn epoch_finished(&mut self, m: &EpochMetrics, epochs: usize) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}epoch {}/{epochs}: train loss {:.4} top-1 {:.2} | val loss {:.4} top-1 {:.2} top-5 {:.2} class-mean {:.2} | {:.0} img/s",
            self.prefix(),
            m.epoch,
            m.train_loss,
            m.train_top1,
            m.val_loss,
            m.val_top1,
            m.val_top5,
            m.val_mean_class_top1,
            m.images_per_s
        );
    }

    fn warning(&mut self, message: &str) {
        if let Some(bar) = &self.bar {
            bar.suspend(|| eprintln!("{}warning: {message}", self.prefix()));
        } else {
            eprintln!("{}warning: {message}", self.prefix());
        }
    }

    fn note(&mut self, message: &str) {
        eprintln!("{}{message}", self.prefix());
    }

    fn failed(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
