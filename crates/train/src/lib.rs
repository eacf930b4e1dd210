//! Training: the reference recipe's numeric pieces (`train.py`, `utils.py`; spec §7).
//!
//! - [`Sgd`]: SGD with momentum, dampening 0 and weight decay in PyTorch's semantics
//!   (`g += wd·p; buf = momentum·buf + g` with `buf = g` at the first step; `p −= lr·buf`, or
//!   `p −= lr·(g + momentum·buf)` with Nesterov). Weight decay applies to every parameter, as in
//!   the reference.
//! - [`label_smoothing_loss`]: cross-entropy against `1 − s` on the target and `s / (C − 1)` on
//!   every other class.
//! - [`mixup`] and [`mixup_loss`]: one λ and one permutation per batch, applied to the images
//!   *and* the encoded locations (the reference mixes both), loss
//!   `λ·LS(out, y) + (1 − λ)·LS(out, y[perm])`.
//! - [`lr_at`]: linear warm-up per iteration for the first epochs, then cosine per epoch.
//!
//! Architecture invariant: generic over what it trains (named variables and tensors); never
//! names a dataset or a model.

mod loss;
mod optim;
mod schedule;

pub use loss::{label_smoothing_loss, mixup, mixup_loss};
pub use optim::{Sgd, SgdConfig};
pub use schedule::{LrSchedule, lr_at};
