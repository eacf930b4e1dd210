//! Initialising a classifier's backbone from an ImageNet checkpoint in a foreign layout.
//!
//! The reference fine-tunes from ImageNet weights: torchvision's ResNet-50 file with `fc` popped
//! and `strict=False`, and its own SK-Res2Net-101 file with `strict=False` and `fc` kept (spec
//! §5), where a wrapped or prefixed file silently loads nothing. Here:
//! - the file's keys are matched after removing `module.` (DataParallel) and `backbone.`
//!   (detection-style wrappers), the state dict found at the top level or under `model` /
//!   `state_dict` ([`WeightsFile::read`]);
//! - **every** backbone tensor (parameters and BatchNorm running statistics) must be in the file
//!   with the backbone's shape, or the load fails naming each missing and misshapen tensor and
//!   changes nothing;
//! - nothing outside the backbone is taken: the classifier's `fc` (ImageNet's 1000 classes, or
//!   any other) keeps its initialisation, as do the location encoder and the fusion head;
//! - the report counts what was taken and lists, with a reason, what was not. BatchNorm's
//!   `num_batches_tracked` is counted apart (PyTorch uses it only without a momentum);
//! - a classifier head is never taken: `fc.*` (torchvision, the reference), `head.*` (timm's
//!   transformers);
//! - the one exception to "every tensor": a backbone may name tensors no ImageNet checkpoint of
//!   its layout has ([`dmlp_backbones::CustomBackbone::fresh_when_pretrained`]: BoTNet's
//!   attention, started from a torchvision ResNet of the same depths). Those keep their
//!   initialisation and the report lists them.

use std::collections::BTreeMap;

use candle_core::{Tensor, Var};

use crate::weights::{Matched, match_by_name};
use crate::{Classifier, ModelError, WeightsFile};

/// Key prefixes a wrapped backbone checkpoint may carry (`module.` is removed when the file is
/// read).
const WRAPPER_PREFIXES: [&str; 1] = ["backbone."];

/// Why a tensor of the file was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// `fc.*` or `head.*`: a pretrained file's classifier is never loaded; the model's `fc` is new.
    ClassifierHead,
    /// A tensor the backbone does not have (a fusion head of a Dynamic MLP checkpoint, an
    /// auxiliary head, a different architecture's extra layer).
    NotInBackbone,
}

impl SkipReason {
    pub fn describe(self) -> &'static str {
        match self {
            SkipReason::ClassifierHead => "the file's classifier head (never loaded: the model's fc is new)",
            SkipReason::NotInBackbone => "not a tensor of this backbone",
        }
    }
}

/// What a pretrained load did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PretrainedLoad {
    /// Backbone tensors taken from the file (all of the backbone's, `num_batches_tracked` aside).
    pub loaded: usize,
    /// The file's tensors not taken, by their name in the file after prefix removal.
    pub skipped: BTreeMap<String, SkipReason>,
    /// `num_batches_tracked` entries of the file (not used).
    pub num_batches_tracked: usize,
    /// The wrapper prefix removed from the file's keys, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stripped_prefix: Option<String>,
    /// Backbone tensors the file cannot have by design, left at their initialisation.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fresh: Vec<String>,
}

impl PretrainedLoad {
    /// One line for logs: `loaded 318 backbone tensors; skipped fc.bias, fc.weight (…)`.
    pub fn summary(&self) -> String {
        let mut text = format!("loaded {} backbone tensors", self.loaded);
        if let Some(prefix) = &self.stripped_prefix {
            text.push_str(&format!(" (keys prefixed {prefix:?})"));
        }
        for reason in [SkipReason::ClassifierHead, SkipReason::NotInBackbone] {
            let names: Vec<&str> =
                self.skipped.iter().filter(|(_, r)| **r == reason).map(|(name, _)| name.as_str()).collect();
            if !names.is_empty() {
                let shown: Vec<&str> = names.iter().take(6).copied().collect();
                let more =
                    if names.len() > shown.len() { format!(", … {} in all", names.len()) } else { String::new() };
                text.push_str(&format!("; skipped {}{more}: {}", shown.join(", "), reason.describe()));
            }
        }
        if !self.fresh.is_empty() {
            text.push_str(&format!(
                "; {} backbone tensors left at their initialisation (no ImageNet checkpoint of this layout has them: {}{})",
                self.fresh.len(),
                self.fresh.iter().take(3).cloned().collect::<Vec<_>>().join(", "),
                if self.fresh.len() > 3 { ", …" } else { "" }
            ));
        }
        text
    }
}

/// The file's tensors keyed as the backbone names them: a wrapper prefix removed from the keys
/// that carry it, unless that would collide with a key already at the root.
fn backbone_keyed(file: &WeightsFile) -> (BTreeMap<String, &Tensor>, Option<String>) {
    for prefix in WRAPPER_PREFIXES {
        let prefixed = file.tensors.keys().filter(|k| k.starts_with(prefix)).count();
        let keyed: BTreeMap<String, &Tensor> = file
            .tensors
            .iter()
            .map(|(name, tensor)| (name.strip_prefix(prefix).unwrap_or(name).to_owned(), tensor))
            .collect();
        if prefixed > 0 && keyed.len() == file.tensors.len() {
            return (keyed, Some(prefix.to_owned()));
        }
    }
    (file.tensors.iter().map(|(name, tensor)| (name.clone(), tensor)).collect(), None)
}

/// A checked load: its report, and each backbone variable with the file's tensor for it.
type Planned<'f> = (PretrainedLoad, Vec<(Var, &'f Tensor)>);

fn is_num_batches_tracked(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

impl Classifier {
    /// Initialises the backbone from `file` (see the module docs). Checks every name and shape
    /// before changing anything.
    pub fn load_pretrained_backbone(&self, file: &WeightsFile) -> Result<PretrainedLoad, ModelError> {
        let (load, pairs) = self.plan_pretrained(file)?;
        for (var, tensor) in pairs {
            var.set(&tensor.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(load)
    }

    /// What [`Classifier::load_pretrained_backbone`] would do, changing nothing.
    pub fn check_pretrained_backbone(&self, file: &WeightsFile) -> Result<PretrainedLoad, ModelError> {
        Ok(self.plan_pretrained(file)?.0)
    }

    fn plan_pretrained<'f>(&self, file: &'f WeightsFile) -> Result<Planned<'f>, ModelError> {
        let Some(backbone_names) = self.backbone_names() else {
            return Err(ModelError::Config("pretrained weights need a [model] backbone".into()));
        };
        let spec = self.config().backbone.as_ref();
        let backbone = spec.map(|b| b.name()).unwrap_or_default();
        let custom = spec.map(|b| b.resolve());
        let fresh_by_design = |name: &str| custom.as_ref().is_some_and(|c| c.fresh_when_pretrained(name));
        let (keyed, stripped_prefix) = backbone_keyed(file);
        let vars = self.store().vars();
        let fresh: Vec<String> = vars
            .iter()
            .map(|(name, _)| name)
            .filter(|name| backbone_names.contains(*name) && fresh_by_design(name) && !keyed.contains_key(*name))
            .cloned()
            .collect();
        let backbone_vars = vars.iter().filter(|(name, _)| backbone_names.contains(name) && !fresh.contains(name));
        let Matched { pairs, missing, misshapen } =
            match_by_name(backbone_vars, |name| keyed.get(name).copied(), &backbone);
        if !missing.is_empty() || !misshapen.is_empty() {
            let mut details = misshapen;
            if !missing.is_empty() {
                details.push(format!(
                    "  missing from the file ({} of {} backbone tensors): {}",
                    missing.len(),
                    backbone_names.len(),
                    crate::weights::list(&missing)
                ));
            }
            details.push(format!(
                "  is it a {backbone} checkpoint? `dmlp weights show {}` lists what it holds",
                file.path.display()
            ));
            return Err(ModelError::WeightsMismatch { path: file.path.clone(), details: details.join("\n") });
        }
        let mut skipped = BTreeMap::new();
        let mut num_batches_tracked = 0;
        for name in keyed.keys() {
            if is_num_batches_tracked(name) {
                num_batches_tracked += 1;
            } else if name.starts_with("fc.") || name.starts_with("head.") {
                skipped.insert(name.clone(), SkipReason::ClassifierHead);
            } else if !backbone_names.contains(name) {
                skipped.insert(name.clone(), SkipReason::NotInBackbone);
            }
        }
        let load = PretrainedLoad { loaded: pairs.len(), skipped, num_batches_tracked, stripped_prefix, fresh };
        Ok((load, pairs))
    }
}
