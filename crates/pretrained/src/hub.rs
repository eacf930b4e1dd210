//! The Hugging Face Hub cache, laid out as every Hub client lays it out, and downloads into it.
//!
//! ```text
//! <cache>/models--ORG--NAME/
//!     refs/<revision>                    the commit a branch or tag points at
//!     snapshots/<commit>/model.safetensors   a symlink into blobs/, or the file itself
//!     blobs/<sha256>                     the file's bytes, named by their hash
//! ```
//!
//! A revision that is a full commit hash is found under `snapshots/` without a ref, as the Python
//! client does. Offline, nothing here opens a connection.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::PretrainedError;
use crate::source::{HUB_WEIGHTS_FILE, HubRepo};

/// How to reach the Hub and its cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The cache folder (`HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Never touch the network (`HF_HUB_OFFLINE` = 1, true, yes or on).
    pub offline: bool,
    /// `HF_ENDPOINT`, default `https://huggingface.co`.
    pub endpoint: String,
    /// `HF_TOKEN`, else the token file the Hub's login writes (`HF_TOKEN_PATH`, else
    /// `HF_HOME/token`); public repositories need none.
    pub token: Option<String>,
    /// Draw a download progress bar on standard error.
    pub progress: bool,
}

/// Which Hub file was used.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HubOrigin {
    /// `ORG/NAME`.
    pub repo: String,
    /// The revision asked for (`main` by default).
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// The file of the repository.
    pub file: String,
}

/// A Hub file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    /// The snapshot path (`snapshots/<commit>/model.safetensors`).
    pub path: PathBuf,
    pub origin: HubOrigin,
    pub warnings: Vec<String>,
}

pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubSettings {
    /// Offline settings over a given cache folder (tests, parity cases).
    pub fn offline(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            offline: true,
            endpoint: DEFAULT_ENDPOINT.into(),
            token: None,
            progress: false,
        }
    }

    /// The settings the Hugging Face clients take from the environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let cache = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|home| Path::new(&home).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            cache.join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE")
            .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
            .map(PathBuf::from)
            .unwrap_or_else(|| hf_home.join("hub"));
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| is_true(&v));
        let endpoint =
            var("HF_ENDPOINT").map_or_else(|| DEFAULT_ENDPOINT.to_owned(), |e| e.trim_end_matches('/').to_owned());
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
            std::fs::read_to_string(path).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
        });
        Self { cache_dir, offline, endpoint, token, progress: false }
    }
}

/// The Hugging Face clients' reading of a boolean variable.
fn is_true(value: &str) -> bool {
    matches!(value.to_ascii_uppercase().as_str(), "1" | "ON" | "YES" | "TRUE")
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The Hub file of `repo` at its revision if the cache holds it. Reads files only.
pub fn cached(settings: &HubSettings, repo: &HubRepo) -> Result<Option<HubFile>, PretrainedError> {
    let repo_dir = settings.cache_dir.join(repo.folder_name());
    let revision = repo.revision();
    let ref_path = repo_dir.join("refs").join(revision);
    let commit = match std::fs::read_to_string(&ref_path) {
        Ok(text) => text.trim().to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if is_commit_hash(revision) {
                revision.to_owned()
            } else {
                return Ok(None);
            }
        }
        Err(e) => return Err(PretrainedError::File { path: ref_path, message: e.to_string() }),
    };
    let commit_ok = !commit.is_empty()
        && commit.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !commit.starts_with('.');
    if !commit_ok {
        return Err(PretrainedError::File {
            path: ref_path,
            message: format!("holds {commit:?}, not a commit hash: the cache is damaged"),
        });
    }
    let path = snapshot_file(settings, repo, &commit);
    if !path.is_file() {
        return Ok(None);
    }
    Ok(Some(HubFile { path, origin: origin(repo, commit), warnings: Vec::new() }))
}

/// `<cache>/models--ORG--NAME/snapshots/<commit>/model.safetensors`.
fn snapshot_file(settings: &HubSettings, repo: &HubRepo, commit: &str) -> PathBuf {
    settings.cache_dir.join(repo.folder_name()).join("snapshots").join(commit).join(HUB_WEIGHTS_FILE)
}

fn origin(repo: &HubRepo, commit: String) -> HubOrigin {
    HubOrigin { repo: repo.id.clone(), revision: repo.revision().to_owned(), commit, file: HUB_WEIGHTS_FILE.to_owned() }
}

/// The blob name behind a snapshot symlink, when it is a SHA-256 (how the Hub names large files).
pub(crate) fn blob_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let name = target.file_name()?.to_str()?;
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then(|| name.to_ascii_lowercase())
}

/// Brings the Hub file of `repo` up to date in the cache: asks the Hub which commit the revision
/// names now and downloads the file unless that snapshot already holds it. Offline, returns the
/// cached file or fails naming the repository and the cache.
pub fn fetch(settings: &HubSettings, repo: &HubRepo) -> Result<HubFile, PretrainedError> {
    if settings.offline {
        return cached(settings, repo)?.ok_or_else(|| not_cached_offline(settings, repo));
    }
    let download_err = |message: String| PretrainedError::Download {
        repo: repo.clone(),
        cache: settings.cache_dir.clone(),
        message: format!("{message} (endpoint {})", settings.endpoint),
    };
    let cache = Cache::new(settings.cache_dir.clone());
    let hub_repo = Repo::with_revision(repo.id.clone(), RepoType::Model, repo.revision().to_owned());
    let api = ApiBuilder::from_cache(cache.clone())
        .with_endpoint(settings.endpoint.clone())
        .with_token(settings.token.clone())
        .with_progress(settings.progress)
        .build()
        .map_err(|e| download_err(e.to_string()))?;
    let api_repo = api.repo(hub_repo.clone());
    let metadata = api.metadata(&api_repo.url(HUB_WEIGHTS_FILE)).map_err(|e| download_err(e.to_string()))?;
    let commit = metadata.commit_hash().to_owned();
    let snapshot = snapshot_file(settings, repo, &commit);
    if !snapshot.is_file() {
        api_repo.download(HUB_WEIGHTS_FILE).map_err(|e| download_err(e.to_string()))?;
    }
    cache.repo(hub_repo).create_ref(&commit).map_err(|e| download_err(format!("writing the ref: {e}")))?;
    cached(settings, repo)?.ok_or_else(|| download_err(format!("the download left no {}", snapshot.display())))
}

/// Offline, the only Hub error: the file is not cached.
pub(crate) fn not_cached_offline(settings: &HubSettings, repo: &HubRepo) -> PretrainedError {
    PretrainedError::NotCachedOffline { repo: repo.clone(), cache: settings.cache_dir.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_as_the_hub_clients_read_them() {
        for yes in ["1", "true", "TRUE", "yes", "On"] {
            assert!(is_true(yes), "{yes}");
        }
        for no in ["0", "false", "no", "off", "", "2"] {
            assert!(!is_true(no), "{no}");
        }
    }
}
