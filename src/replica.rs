//! What one builder among several needs: its own data dir (locked, so two processes never
//! share one), an id other builders' pushes can name, and app leases when the storage is
//! shared (S3).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Settings, StorageSettings};
use deis_lease::Leases;
use deis_storage::ObjectStore;

/// Holds the data dir's lock for as long as the process runs.
#[derive(Debug)]
pub struct DataDirLock {
    _file: std::fs::File,
}

/// Takes the data dir for this process, or says which process has it. Its git repos, hook
/// socket, container label and builder id belong to one builder at a time.
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<DataDirLock> {
    let path = data_dir.join("builder.lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !locked {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        anyhow::bail!(
            "the data dir {} is in use by another deis-builder (pid {}); every builder needs a data dir of its own",
            data_dir.display(),
            holder.trim()
        );
    }
    file.set_len(0)?;
    write!(file, "{}", std::process::id())?;
    Ok(DataDirLock { _file: file })
}

/// This builder's id, kept in the data dir: the host name (a pod's name) and a random
/// part, so replicas with the same data dir path still differ and a restart keeps its id
/// (and takes back its own leases at once).
pub fn builder_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("builder-id");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.len() <= 80 && id.chars().all(is_id_char) {
            return Ok(id.to_owned());
        }
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| is_id_char(*c))
        .take(48)
        .collect();
    let random = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let id = if host.is_empty() {
        random
    } else {
        format!("{host}-{random}")
    };
    std::fs::write(&path, &id).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.'
}

/// App leases when the storage is shared (S3); `None` with local storage, which serves
/// one builder (the data dir lock keeps a second one out).
pub fn leases(settings: &Settings, store: &Arc<dyn ObjectStore>, id: &str) -> Option<Leases> {
    match settings.storage {
        StorageSettings::S3 { .. } => Some(Leases::new(
            store.clone(),
            id.to_owned(),
            settings.limits.lease_ttl,
        )),
        StorageSettings::Local(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_per_data_dir_and_a_stable_id() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_data_dir(dir.path()).unwrap();
        let refused = lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(
            refused.contains("in use by another deis-builder"),
            "{refused}"
        );
        assert!(
            refused.contains(&format!("pid {}", std::process::id())),
            "{refused}"
        );
        drop(held);
        assert!(lock_data_dir(dir.path()).is_ok());

        let id = builder_id(dir.path()).unwrap();
        assert_eq!(builder_id(dir.path()).unwrap(), id);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(builder_id(other.path()).unwrap(), id);
    }
}
