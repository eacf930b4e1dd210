//! Where the project and the shared fixtures are.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The workspace root (the folder above `xtask/`).
pub(crate) fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// The shared folder beside the checkout: `$DMLP_SHARED_DIR` if set, else `<root>/shared`, else
/// `<root>/../shared`.
pub(crate) fn shared_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("DMLP_SHARED_DIR") {
        let dir = PathBuf::from(dir);
        if !dir.is_dir() {
            bail!("DMLP_SHARED_DIR={} is not a directory", dir.display());
        }
        return Ok(dir);
    }
    let root = project_root();
    let candidates = [root.join("shared"), root.join("..").join("shared")];
    candidates.iter().find(|dir| dir.is_dir()).cloned().with_context(|| {
        format!(
            "the shared folder (reference fixtures) was not found: looked at $DMLP_SHARED_DIR, {} and {}",
            candidates[0].display(),
            candidates[1].display()
        )
    })
}

/// The parity fixtures folder.
pub(crate) fn parity_fixtures_dir() -> anyhow::Result<PathBuf> {
    let dir = shared_dir()?.join("fixtures").join("parity");
    if !dir.is_dir() {
        bail!("{} does not exist: the shared folder has no parity fixtures", dir.display());
    }
    Ok(dir)
}
