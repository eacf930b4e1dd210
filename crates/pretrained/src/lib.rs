//! Where pretrained backbone weights come from: a `[model] pretrained` string resolved to a file
//! on disk, with the SHA-256 that a run's provenance records.
//!
//! Two kinds of source ([`WeightsSource`]):
//! - `hf:ORG/NAME[@REVISION]`: the file `model.safetensors` of a Hugging Face Hub model repository
//!   (timm publishes ImageNet weights this way: `hf:timm/resnet50.tv_in1k`), found in the Hub's
//!   standard cache ([`hub`]) or downloaded into it through the `hf-hub` crate;
//! - a path to a local file (safetensors, a PyTorch `.pth`, a reference checkpoint).
//!
//! [`HubSettings::from_env`] reads the variables the Hugging Face clients read (`HF_HUB_CACHE`,
//! `HF_HOME`, `XDG_CACHE_HOME`, `HF_HUB_OFFLINE`, `HF_ENDPOINT`, `HF_TOKEN`); hf-hub itself ignores
//! `HF_HUB_OFFLINE`, so offline mode is enforced here: it never opens a connection.
//!
//! Architecture invariant: this crate finds and fingerprints files; it knows nothing of tensors,
//! models or training (loading by name is `dmlp-model`'s job). Only [`HubSettings::from_env`]
//! reads the environment, and only [`hub::fetch`] touches the network.

pub mod hub;
mod sha256;
mod source;

use std::path::{Path, PathBuf};

pub use hub::{HubOrigin, HubSettings};
pub use sha256::sha256_file;
pub use source::{HUB_WEIGHTS_FILE, HubRepo, WeightsSource};

/// A weights file, found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ResolvedWeights {
    /// The source as the config gave it (`hf:timm/resnet50.tv_in1k`, `checkpoints/x.pth`).
    pub source: String,
    /// The file read (for a Hub file, its snapshot path in the cache).
    pub path: PathBuf,
    /// For a Hub file: the repository, the revision asked for and the commit it resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubOrigin>,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub bytes: u64,
    /// Things worth a warning that do not stop the load (a cached blob whose name disagrees with
    /// its content's hash).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Everything that can go wrong finding a weights file.
#[derive(Debug, thiserror::Error)]
pub enum PretrainedError {
    #[error("bad pretrained source {text:?}: {message}")]
    Source { text: String, message: String },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "{}@{}: {HUB_WEIGHTS_FILE} is not in the Hugging Face cache {} and offline mode is on (HF_HUB_OFFLINE): \
         run `dmlp weights fetch {repo}` on a machine with network access (with the same HF_HOME or HF_HUB_CACHE), \
         or unset HF_HUB_OFFLINE",
        .repo.id, .repo.revision(), .cache.display()
    )]
    NotCachedOffline { repo: HubRepo, cache: PathBuf },
    #[error(
        "{}@{}: downloading {HUB_WEIGHTS_FILE} into {} failed: {message}. On a machine without \
         network access, run `dmlp weights fetch {repo}` elsewhere and copy the cache folder, then set \
         HF_HUB_OFFLINE=1",
        .repo.id, .repo.revision(), .cache.display()
    )]
    /// `message` names the endpoint.
    Download { repo: HubRepo, cache: PathBuf, message: String },
}

/// Finds the file `source` names: a Hub file in the cache (downloading it when it is missing and
/// offline mode is off), or a local file (a relative path resolves against `base`, the config
/// file's folder). Hashes the file.
pub fn resolve(source: &str, base: &Path, hub: &HubSettings) -> Result<ResolvedWeights, PretrainedError> {
    let parsed = WeightsSource::parse(source)?;
    let (path, origin, mut warnings) = match &parsed {
        WeightsSource::Hub(repo) => {
            let found = match hub::cached(hub, repo)? {
                Some(found) => found,
                None => hub::fetch(hub, repo)?,
            };
            (found.path, Some(found.origin), found.warnings)
        }
        WeightsSource::File(path) => {
            let path = if path.is_relative() { base.join(path) } else { path.clone() };
            if !path.is_file() {
                return Err(PretrainedError::File {
                    path,
                    message: "no such weights file (a relative path resolves against the config file's folder)".into(),
                });
            }
            (path, None, Vec::new())
        }
    };
    let (sha256, bytes) =
        sha256_file(&path).map_err(|e| PretrainedError::File { path: path.clone(), message: e.to_string() })?;
    if let Some(name) = hub::blob_name(&path)
        && name != sha256
    {
        warnings.push(format!(
            "{}: the cached blob is named {name} but its content hashes to {sha256}; it may be corrupt (delete it and \
             run `dmlp weights fetch` again)",
            path.display()
        ));
    }
    Ok(ResolvedWeights { source: source.to_owned(), path, hub: origin, sha256, bytes, warnings })
}
