//! Running the `sipguard` binary from the repository root, shared by the command-line tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Runs `sipguard ARGS` from the repository root, so file names print as `config/...`.
pub fn sipguard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipguard"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("RUST_LOG")
        .output()
        .expect("sipguard runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
