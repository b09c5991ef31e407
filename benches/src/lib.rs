//! Helpers shared by the teleport benches (the bench targets themselves live in `benches/`).
//!
//! - [`corpus`]: the traffic of the compression-ratio bench, recorded real-world API exchanges
//!   fetched at run time (`benches/fetch_corpus.py`), with a generated fallback.

pub mod corpus;

use std::env;
use std::path::{Path, PathBuf};

/// The workspace's root directory (the parent of this crate's).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` (relative to the workspace root), or the
/// workspace's `target/`. Bench results and the fetched corpus go there.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    }
}
