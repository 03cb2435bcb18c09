//! SSH host keys: operator-provided files, or an ed25519 key generated on first start.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngCore;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("cannot read host key {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("cannot write new host key {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Loads every key in `paths`. A missing file is generated only when it is the single
/// default key, so a typo in an operator's key path is an error, not a silent new identity.
pub fn load_or_generate(
    paths: &[PathBuf],
    generate_missing: bool,
) -> Result<Vec<PrivateKey>, HostKeyError> {
    paths
        .iter()
        .map(|path| {
            if generate_missing && !path.exists() {
                generate(path)?;
            }
            russh::keys::load_secret_key(path, None).map_err(|e| HostKeyError::Load {
                path: path.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

fn generate(path: &Path) -> Result<(), HostKeyError> {
    let write_err = |source| HostKeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| write_err(std::io::Error::other(e.to_string())))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    // Written to a temporary name first: a crash must not leave a truncated key behind.
    let tmp = path.with_extension("tmp");
    let mut file = open_private(&tmp).map_err(write_err)?;
    file.write_all(pem.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, path).map_err(write_err)?;
    tracing::info!(path = %path.display(), "generated SSH host key");
    Ok(())
}

fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        let first = load_or_generate(std::slice::from_ref(&path), true).unwrap();
        let second = load_or_generate(std::slice::from_ref(&path), true).unwrap();
        assert_eq!(first[0].public_key(), second[0].public_key());
        let missing = load_or_generate(&[dir.path().join("nope")], false);
        assert!(matches!(missing, Err(HostKeyError::Load { .. })));
    }
}
