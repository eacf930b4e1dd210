//! Repository checks that run under `cargo test`: every Rust file opens with `//!` docs, no
//! `should_panic` or `ignore` attributes (assert the behaviour instead), no trailing whitespace,
//! every crate takes the workspace lints, and every integration test file is compiled.

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn files_with_extension(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" && name != "shared" && !name.to_string_lossy().starts_with('.') {
                    files_with_extension(&path, ext, out);
                }
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }

    fn rust_files() -> Vec<PathBuf> {
        let root = crate::paths::project_root();
        let mut files = Vec::new();
        files_with_extension(&root.join("crates"), "rs", &mut files);
        files_with_extension(&root.join("xtask"), "rs", &mut files);
        assert!(files.len() > 10, "found only {} Rust files", files.len());
        files
    }

    #[test]
    fn every_rust_file_opens_with_module_docs() {
        let missing: Vec<_> = rust_files()
            .into_iter()
            .filter(|path| !std::fs::read_to_string(path).unwrap_or_default().starts_with("//!"))
            .collect();
        assert!(missing.is_empty(), "files without //! docs: {missing:?}");
    }

    #[test]
    fn no_should_panic_ignore_or_trailing_whitespace() {
        let should_panic = ["#[should", "_panic"].concat();
        let ignore = ["#[ig", "nore"].concat();
        let mut problems = Vec::new();
        for path in rust_files() {
            let text = std::fs::read_to_string(&path).unwrap();
            for (idx, line) in text.lines().enumerate() {
                if line.contains(&should_panic) || line.trim_start().starts_with(&ignore) {
                    problems.push(format!("{}:{}: {}", path.display(), idx + 1, line.trim()));
                }
                if line.ends_with(' ') || line.ends_with('\t') {
                    problems.push(format!("{}:{}: trailing whitespace", path.display(), idx + 1));
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn every_crate_uses_the_workspace_lints() {
        let root = crate::paths::project_root();
        let mut manifests = Vec::new();
        files_with_extension(&root.join("crates"), "toml", &mut manifests);
        manifests.push(root.join("xtask").join("Cargo.toml"));
        let manifests: Vec<_> = manifests.into_iter().filter(|p| p.ends_with("Cargo.toml")).collect();
        assert!(manifests.len() >= 6);
        for manifest in manifests {
            let text = std::fs::read_to_string(&manifest).unwrap();
            assert!(
                text.contains("[lints]\nworkspace = true"),
                "{} does not use the workspace lints",
                manifest.display()
            );
        }
    }

    /// A crate with several integration test files builds them as one binary (`tests/main.rs`,
    /// `autotests = false`): each test binary links candle and often polars, and a clean CI build
    /// once ran out of disk with one binary per file. A file that `tests/main.rs` does not declare
    /// would never compile nor run, so every one must be declared.
    #[test]
    fn every_integration_test_file_is_compiled() {
        let root = crate::paths::project_root();
        let mut checked = 0;
        for entry in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
            let tests = entry.path().join("tests");
            let main = tests.join("main.rs");
            let manifest = std::fs::read_to_string(entry.path().join("Cargo.toml")).unwrap_or_default();
            if !main.exists() {
                assert!(
                    !manifest.contains("autotests = false"),
                    "{}: autotests off without tests/main.rs",
                    entry.path().display()
                );
                continue;
            }
            assert!(
                manifest.contains("autotests = false") && manifest.contains("path = \"tests/main.rs\""),
                "{}: tests/main.rs needs `autotests = false` and a [[test]] with that path",
                entry.path().display()
            );
            let declared = std::fs::read_to_string(&main).unwrap();
            for test in std::fs::read_dir(&tests).unwrap().flatten() {
                let path = test.path();
                let module = if path.is_dir() && path.join("mod.rs").exists() {
                    test.file_name().to_string_lossy().into_owned()
                } else if path.extension().is_some_and(|e| e == "rs") && path != main {
                    path.file_stem().unwrap().to_string_lossy().into_owned()
                } else {
                    continue;
                };
                assert!(
                    declared.lines().any(|line| line.trim() == format!("mod {module};")),
                    "{} is not declared in {} (`mod {module};`): it would never run",
                    path.display(),
                    main.display()
                );
                checked += 1;
            }
        }
        assert!(checked >= 20, "checked only {checked} test modules");
    }

    #[test]
    fn every_config_has_a_valid_model_table() {
        let root = crate::paths::project_root();
        let mut configs = Vec::new();
        files_with_extension(&root.join("configs"), "toml", &mut configs);
        // Table specs are checked by the reproduce module.
        configs.retain(|path| !path.starts_with(root.join("configs").join("tables")));
        assert!(!configs.is_empty(), "no configs found");
        let manifest_text = std::fs::read_to_string(root.join("data-manifests").join("pretrained.toml")).unwrap();
        let manifest: toml::Table = toml::from_str(&manifest_text).unwrap();
        let manifest = manifest["weights"].as_array().unwrap().clone();
        for config in configs {
            if let Err(err) = dmlp_model::ModelConfig::from_toml_file(&config) {
                panic!("{err}");
            }
            // Run configs: the whole file parses and validates (the data folder need not exist).
            let run = match dmlp_experiment::RunConfig::from_file(&config, &[]) {
                Ok(run) => run,
                Err(err) => panic!("{err}"),
            };
            // Every paper config starts from a pretrained file that data-manifests/pretrained.toml
            // describes (a Hub id by its id, a file by its name).
            let source = run.model.pretrained.unwrap_or_else(|| panic!("{}: no [model] pretrained", config.display()));
            let named = manifest.iter().any(|entry| {
                let entry_source = entry["source"].as_str().unwrap_or_default();
                let entry_file = entry["file"].as_str().unwrap_or_default();
                source == entry_source || (!source.starts_with("hf:") && source.ends_with(&format!("/{entry_file}")))
            });
            assert!(named, "{}: pretrained = {source:?} is not in data-manifests/pretrained.toml", config.display());
        }
    }
}
