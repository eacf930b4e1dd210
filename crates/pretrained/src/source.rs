//! The `[model] pretrained` string.

use std::path::PathBuf;

use crate::PretrainedError;

/// Where weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// `hf:ORG/NAME[@REVISION]`.
    Hub(HubRepo),
    /// Anything else: a file path.
    File(PathBuf),
}

/// A Hub model repository and the revision asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// `ORG/NAME`.
    pub id: String,
    /// A branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

/// The file of a Hub repository that holds the weights (timm's and transformers' name).
pub const HUB_WEIGHTS_FILE: &str = "model.safetensors";

impl HubRepo {
    /// The revision, `main` when none was given.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// `@REV` when a revision was given, else empty (for messages that repeat the user's id).
    pub fn at_revision(&self) -> String {
        self.revision.as_ref().map(|r| format!("@{r}")).unwrap_or_default()
    }

    /// The cache folder name: `models--ORG--NAME`.
    pub fn folder_name(&self) -> String {
        format!("models--{}", self.id.replace('/', "--"))
    }
}

impl std::fmt::Display for HubRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "hf:{}{}", self.id, self.at_revision())
    }
}

impl WeightsSource {
    /// Parses `hf:ORG/NAME[@REVISION]` or a path. Repository names and revisions are checked
    /// (letters, digits, `-`, `_`, `.`; a revision may hold `/`, never `..`), since both become
    /// folder names in the cache.
    pub fn parse(text: &str) -> Result<Self, PretrainedError> {
        let err = |message: &str| PretrainedError::Source { text: text.to_owned(), message: message.to_owned() };
        let text_trimmed = text.trim();
        if text_trimmed.is_empty() {
            return Err(err("empty"));
        }
        let Some(rest) = text_trimmed.strip_prefix("hf:") else {
            return Ok(WeightsSource::File(PathBuf::from(text_trimmed)));
        };
        let (id, revision) = match rest.split_once('@') {
            Some((id, revision)) => (id, Some(revision)),
            None => (rest, None),
        };
        let parts: Vec<&str> = id.split('/').collect();
        let name_ok = |part: &str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.len() != 2 || !parts.iter().all(|part| name_ok(part)) {
            return Err(err("expected hf:ORG/NAME[@REVISION], e.g. hf:timm/resnet50.tv_in1k"));
        }
        if let Some(revision) = revision {
            let revision_ok = !revision.is_empty()
                && !revision.starts_with('/')
                && !revision.ends_with('/')
                && revision.split('/').all(|part| name_ok(part) && part != "..");
            if !revision_ok {
                return Err(err("the revision after @ must be a branch, tag or commit (letters, digits, - _ . /)"));
            }
        }
        Ok(WeightsSource::Hub(HubRepo { id: id.to_owned(), revision: revision.map(str::to_owned) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_ids_with_and_without_revisions() {
        let WeightsSource::Hub(repo) = WeightsSource::parse("hf:timm/resnet50.tv_in1k").unwrap() else { panic!() };
        assert_eq!((repo.id.as_str(), repo.revision()), ("timm/resnet50.tv_in1k", "main"));
        assert_eq!(repo.folder_name(), "models--timm--resnet50.tv_in1k");
        let WeightsSource::Hub(repo) = WeightsSource::parse("hf:timm/resnet18.tv_in1k@refs/pr/3").unwrap() else {
            panic!()
        };
        assert_eq!(repo.revision(), "refs/pr/3");
        assert_eq!(repo.to_string(), "hf:timm/resnet18.tv_in1k@refs/pr/3");
    }

    #[test]
    fn anything_without_the_prefix_is_a_path() {
        assert_eq!(
            WeightsSource::parse("checkpoints/sk2res2net101_epoch_300.pth").unwrap(),
            WeightsSource::File("checkpoints/sk2res2net101_epoch_300.pth".into())
        );
    }

    #[test]
    fn rejects_ids_that_would_leave_the_cache() {
        for bad in
            ["hf:", "hf:timm", "hf:a/b/c", "hf:../x", "hf:timm/..", "hf:timm/x@", "hf:timm/x@../../etc", "hf:t m/x", ""]
        {
            let err = WeightsSource::parse(bad).unwrap_err().to_string();
            assert!(err.contains("bad pretrained source"), "{bad}: {err}");
        }
    }
}
