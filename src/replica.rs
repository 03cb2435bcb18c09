//! What one builder among several needs: its own data dir (locked, so two processes never
//! share one), an id other builders' pushes can name, and app leases when the storage is
//! shared (S3).

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::AsyncReadExt;

use crate::config::{Settings, StorageSettings};
use deis_controller::{ControllerError, SharedState, Written};
use deis_lease::Leases;
use deis_storage::{ObjectStore, StorageError, Version};

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

/// The object store as the standalone controller keeps its state in it (with S3).
#[derive(Debug)]
pub struct StandaloneState(pub Arc<dyn ObjectStore>);

fn state_error(error: StorageError) -> ControllerError {
    ControllerError::Storage(error.to_string())
}

fn written(result: Result<Version, StorageError>) -> Result<Written, ControllerError> {
    match result {
        Ok(version) => Ok(Written::Done(version.as_str().to_owned())),
        Err(StorageError::Conflict { .. }) => Ok(Written::Lost),
        Err(error) => Err(state_error(error)),
    }
}

#[async_trait::async_trait]
impl SharedState for StandaloneState {
    async fn read(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, ControllerError> {
        let Some(reader) = self.0.get(key).await.map_err(state_error)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|error| ControllerError::Storage(format!("read {key:?}: {error}")))?;
        if bytes.len() as u64 > limit {
            return Err(ControllerError::Storage(format!(
                "{key:?} in {} is larger than {limit} bytes",
                self.0.describe()
            )));
        }
        Ok(Some(bytes))
    }

    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, ControllerError> {
        let record = self.0.read_record(key).await.map_err(state_error)?;
        Ok(record.map(|(data, version)| (data, version.as_str().to_owned())))
    }

    async fn create(&self, key: &str, data: &[u8]) -> Result<Written, ControllerError> {
        written(self.0.create_record(key, data).await)
    }

    async fn replace(
        &self,
        key: &str,
        data: &[u8],
        version: &str,
    ) -> Result<Written, ControllerError> {
        let expected = Version::new(version.to_owned());
        written(self.0.replace_record(key, data, &expected).await)
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The standalone controller's state in a store: a data dir moved in once, releases
    /// numbered without gaps or duplicates by two controllers at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_standalone_controller_keeps_its_state_in_the_store() {
        use deis_controller::{Artifact, Controller, Moved, ReleaseRequest, StandaloneController};
        use deis_types::names::AppName;

        let dir = tempfile::tempdir().unwrap();
        let app_dir = dir.path().join("data/apps/web/releases");
        std::fs::create_dir_all(&app_dir).unwrap();
        std::fs::write(app_dir.join("v1.json"), "{}").unwrap();
        std::fs::write(
            dir.path().join("data/apps/web/config.json"),
            r#"{"A": "1"}"#,
        )
        .unwrap();
        let store = deis_storage::LocalStore::open(dir.path().join("store"))
            .await
            .unwrap();
        let state: Arc<dyn SharedState> = Arc::new(StandaloneState(Arc::new(store)));
        let standalone =
            StandaloneController::new(dir.path().join("data"), dir.path().join("authorized_keys"))
                .in_store(state);
        let moved = standalone.move_into_store().await.unwrap();
        assert_eq!((moved.configs, moved.releases), (1, 1));
        assert_eq!(
            standalone.move_into_store().await.unwrap(),
            Moved::default()
        );
        std::fs::remove_dir_all(dir.path().join("data")).unwrap();
        let app = AppName::parse("web").unwrap();
        let config = standalone.app_config("dev", &app).await.unwrap();
        assert_eq!(config.get("A"), Some("1"));

        let releases: Vec<_> = (0..16)
            .map(|_| {
                let standalone = standalone.clone();
                tokio::spawn(async move {
                    let app = AppName::parse("web").unwrap();
                    let artifact = Artifact::Image("img".into());
                    let procfile = Default::default();
                    let build = ReleaseRequest {
                        user: "dev",
                        app: &app,
                        sha: "0123456789abcdef0123456789abcdef01234567",
                        artifact: &artifact,
                        procfile: &procfile,
                    };
                    standalone.release(&build).await.unwrap()
                })
            })
            .collect();
        let mut versions = Vec::new();
        for release in releases {
            versions.push(release.await.unwrap());
        }
        versions.sort_unstable();
        assert_eq!(versions, (2..=17).collect::<Vec<u64>>());
    }

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
