//! deq-core as a dependency of someone else's crate, against crates.io candle.
//!
//! The workspace builds against `vendor/candle-core` through `[patch.crates-io]`, and a patch
//! does not reach other workspaces. This test builds, outside this workspace and without any
//! `[patch]`, a workspace of two members:
//!
//! * a copy of `crates/deq-core` (its sources and tests), whose test suite then runs against
//!   crates.io's candle-core with the default features (no `pruned-vjp`);
//! * a user crate that depends on deq-core by path and whose `main.rs` is the library example
//!   of README.md, run as a program.
//!
//! The target folder is this workspace's, so dependencies built with the same settings are
//! reused; only candle, deq-core and the user crate are compiled. Needs the crates.io index
//! (as the workspace's own first build does).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The first ```rust block of README.md.
fn readme_example() -> String {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme.find("```rust\n").expect("README.md has a ```rust block (the library example)") + "```rust\n".len();
    let len = readme[start..].find("```").expect("the block is closed");
    readme[start..start + len].to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// The root manifest of the outside workspace: this workspace's shared package fields,
/// dependency versions and profiles, with no `[patch]`.
fn outside_root_manifest() -> String {
    let text = std::fs::read_to_string(repo().join("Cargo.toml")).unwrap();
    let mut doc: toml::Table = toml::from_str(&text).unwrap();
    for key in ["package", "lib", "bin", "features", "dependencies", "dev-dependencies", "patch"] {
        doc.remove(key);
    }
    let ws = doc.get_mut("workspace").and_then(|w| w.as_table_mut()).unwrap();
    ws.insert("members".into(), toml::Value::Array(vec!["deq-core".into(), "user".into()]));
    ws.remove("default-members");
    // The workspace's internal crates are not there; deq-core's own entry is not needed.
    if let Some(deps) = ws.get_mut("dependencies").and_then(|d| d.as_table_mut()) {
        deps.retain(|_, v| v.get("path").is_none());
    }
    toml::to_string(&doc).unwrap()
}

#[test]
fn deq_core_builds_tests_and_runs_the_readme_example_against_crates_io_candle() {
    let example = readme_example();
    assert!(example.contains("fn main()"), "the README example is a whole program");
    let dir = std::env::temp_dir().join(format!("deq-zoo-outside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Cargo.toml"), outside_root_manifest()).unwrap();
    std::fs::create_dir_all(dir.join("deq-core")).unwrap();
    for part in ["Cargo.toml", "src", "tests"] {
        let from = repo().join("crates/deq-core").join(part);
        if from.is_dir() {
            copy_dir(&from, &dir.join("deq-core").join(part));
        } else {
            std::fs::copy(&from, dir.join("deq-core").join(part)).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("user/src")).unwrap();
    std::fs::write(
        dir.join("user/Cargo.toml"),
        "[package]\nname = \"deq-core-user\"\nversion = \"0.1.0\"\nedition = \"2021\"\npublish = false\n\n\
         [dependencies]\ndeq-core = { path = \"../deq-core\" }\ncandle-core = \"0.11\"\ncandle-nn = \"0.11\"\n",
    )
    .unwrap();
    std::fs::write(dir.join("user/src/main.rs"), &example).unwrap();
    // Start from this workspace's lock file so that the shared dependencies resolve to the same
    // versions (and their build artifacts are reused).
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo().join("target"));

    let cargo = |args: &[&str]| {
        let out = Command::new(env!("CARGO")).current_dir(&dir).args(args).env("CARGO_TARGET_DIR", &target).output().expect("cargo runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // No patch: candle-core comes from crates.io.
    let (ok, tree, err) = cargo(&["tree", "-p", "deq-core-user", "-i", "candle-core", "--depth", "0"]);
    assert!(ok, "cargo tree failed:\n{err}");
    assert!(tree.contains("candle-core v0.11") && !tree.contains("vendor"), "candle-core is not the crates.io one:\n{tree}");

    let (ok, out, err) = cargo(&["run", "-q", "-p", "deq-core-user"]);
    assert!(ok, "the README example failed outside the workspace:\n{err}\n{out}");
    assert!(out.contains("relative residual"), "unexpected output of the README example:\n{out}");

    // Without its default features deq-core needs neither clap, anyhow nor toml.
    let (ok, _, err) = cargo(&["check", "-q", "-p", "deq-core", "--no-default-features", "--lib"]);
    assert!(ok, "deq-core does not build without its default features:\n{err}");
    let (ok, tree, err) = cargo(&["tree", "-p", "deq-core", "--no-default-features", "-e", "normal", "--prefix", "none"]);
    assert!(ok, "{err}");
    for heavy in ["clap ", "anyhow ", "toml "] {
        assert!(!tree.lines().any(|l| l.starts_with(heavy)), "deq-core without default features still depends on {heavy}:\n{tree}");
    }

    let (ok, out, err) = cargo(&["test", "-q", "-p", "deq-core"]);
    let tail: String = format!("{out}\n{err}").lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(ok, "deq-core's tests fail against crates.io candle-core:\n{tail}");
    let _ = std::fs::remove_dir_all(&dir);
}
