//! Where the project and the shared fixtures are.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The workspace root: `$DMLP_ROOT` if set, else the current directory when it is a checkout
/// (a release binary carried to another machine runs from the copy of the tree there), else the
/// folder above `xtask/` where this binary was built.
pub(crate) fn project_root() -> PathBuf {
    if let Some(root) = std::env::var_os("DMLP_ROOT") {
        return PathBuf::from(root);
    }
    if let Ok(cwd) = std::env::current_dir()
        && cwd.join("xtask").join("Cargo.toml").is_file()
    {
        return cwd;
    }
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

/// The small parity cases committed with the code (`xtask/fixtures/parity`): they run on every
/// clone, with or without the shared folder.
pub(crate) fn committed_parity_dir() -> PathBuf {
    project_root().join("xtask").join("fixtures").join("parity")
}

/// The shared parity folders that exist: `fixtures/parity` (the reference Dynamic MLP code's
/// cases) and `fixtures/parity-baselines` (PriorsNet by geo_prior's code); an error when the shared
/// folder itself cannot be found.
pub(crate) fn shared_parity_dirs() -> anyhow::Result<Vec<PathBuf>> {
    let fixtures = shared_dir()?.join("fixtures");
    let dirs: Vec<PathBuf> = ["parity", "parity-baselines", "parity-pretrained", "parity-transformers"]
        .iter()
        .map(|name| fixtures.join(name))
        .filter(|dir| dir.is_dir())
        .collect();
    if dirs.is_empty() {
        bail!("{} holds no parity fixtures", fixtures.display());
    }
    Ok(dirs)
}
