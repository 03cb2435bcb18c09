//! Looking into slugs and other artifacts with the tools an operator would use.

use std::path::Path;
use std::process::Command;

/// Lists the entry names of a gzip'd tar (the slug), via GNU tar like an operator would.
pub fn slug_entries(slug: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tzf").arg(slug).output().unwrap();
    assert!(
        out.status.success(),
        "tar -tzf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}
