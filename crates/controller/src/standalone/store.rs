//! Standalone state in the object store that several builders share:
//!
//! ```text
//! builder/standalone/authorized_keys
//! builder/standalone/apps/<app>/config.json
//! builder/standalone/apps/<app>/releases/v<N>.json    created only if absent
//! builder/standalone/apps/<app>/releases/latest.json  {"version": N}: where to start looking
//! ```
//!
//! Release numbers are unique and gapless across builders: `v<N>` is created with a
//! conditional write, and only after `v<N-1>` was found taken (or N is one past the hint,
//! written after its release), so a lost race moves on to the next number.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::{too_much_contention, AppName, ControllerError, MAX_RELEASE_ALLOCATION_ATTEMPTS};

/// The shared object store as the standalone controller needs it. The binary adapts
/// `deis_storage::ObjectStore` to it, so this crate stays free of the S3 SDK. Errors are
/// [`ControllerError::Storage`] with the store's message.
#[async_trait::async_trait]
pub trait SharedState: Send + Sync + std::fmt::Debug {
    /// The object at `key` whole, at most `limit` bytes (more is an error); `None` when
    /// absent.
    async fn read(&self, key: &str, limit: u64) -> Result<Option<Vec<u8>>, ControllerError>;
    /// A small record and its version; `None` when absent.
    async fn read_record(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, ControllerError>;
    /// Creates the record only if `key` is free (S3: `If-None-Match: *`).
    async fn create(&self, key: &str, data: &[u8]) -> Result<Written, ControllerError>;
    /// Replaces the record only while its version is `version` (S3: `If-Match`).
    async fn replace(
        &self,
        key: &str,
        data: &[u8],
        version: &str,
    ) -> Result<Written, ControllerError>;
    fn describe(&self) -> String;
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the new version.
    Done(String),
    /// Someone else's record was there first: nothing was written.
    Lost,
}

const PREFIX: &str = "builder/standalone";
/// The most bytes of `authorized_keys` or a `config.json` read from the store.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// What [`super::StandaloneController::move_into_store`] moved.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    pub authorized_keys: bool,
    pub configs: usize,
    pub releases: usize,
}

fn keys_key() -> String {
    format!("{PREFIX}/authorized_keys")
}

fn app_key(app: &AppName, rest: &str) -> String {
    format!("{PREFIX}/apps/{app}/{rest}")
}

/// An object read whole (up to [`MAX_FILE_BYTES`]), with its key as a path for messages.
async fn read(
    store: &dyn SharedState,
    key: String,
) -> Result<Option<(Vec<u8>, PathBuf)>, ControllerError> {
    let bytes = store.read(&key, MAX_FILE_BYTES).await?;
    Ok(bytes.map(|bytes| (bytes, PathBuf::from(key))))
}

pub async fn authorized_keys(
    store: &dyn SharedState,
) -> Result<Option<(String, PathBuf)>, ControllerError> {
    let Some((bytes, path)) = read(store, keys_key()).await? else {
        return Ok(None);
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some((text, path))),
        Err(_) => Err(ControllerError::Storage(format!(
            "{} is not UTF-8 text",
            path.display()
        ))),
    }
}

pub async fn app_config(
    store: &dyn SharedState,
    app: &AppName,
) -> Result<Option<(Vec<u8>, PathBuf)>, ControllerError> {
    read(store, app_key(app, "config.json")).await
}

/// The release number to try first and the hint's version (to move it on).
async fn hint(
    store: &dyn SharedState,
    app: &AppName,
) -> Result<(u64, Option<String>), ControllerError> {
    let key = app_key(app, "releases/latest.json");
    let Some((bytes, version)) = store.read_record(&key).await? else {
        return Ok((0, None));
    };
    let latest = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|hint| hint["version"].as_u64())
        .unwrap_or(0);
    Ok((latest, Some(version)))
}

/// Moves the hint on to `latest`, unless someone moved it meanwhile (then it is theirs).
/// A hint left behind only costs the next release a few extra conditional writes.
async fn advance_hint(store: &dyn SharedState, app: &AppName, read: Option<String>, latest: u64) {
    let key = app_key(app, "releases/latest.json");
    let data = json!({ "version": latest }).to_string().into_bytes();
    let written = match &read {
        Some(version) => store.replace(&key, &data, version).await,
        None => store.create(&key, &data).await,
    };
    if let Err(error) = written {
        tracing::warn!(%app, %error, "cannot move the release hint on");
    }
}

/// Creates the next `v<N>.json` of `app` in the store; returns N.
pub async fn create_release(
    store: &dyn SharedState,
    app: &AppName,
    record: &(dyn Fn(u64) -> Vec<u8> + Sync),
) -> Result<u64, ControllerError> {
    let (latest, hint_version) = hint(store, app).await?;
    let mut version = latest + 1;
    for _ in 0..MAX_RELEASE_ALLOCATION_ATTEMPTS {
        let key = app_key(app, &format!("releases/v{version}.json"));
        match store.create(&key, &record(version)).await? {
            Written::Done(_) => {
                advance_hint(store, app, hint_version, version).await;
                return Ok(version);
            }
            Written::Lost => version += 1,
        }
    }
    Err(too_much_contention(app))
}

/// Creates `key` from the file at `path` unless the store has it; whether it did.
async fn move_file(
    store: &dyn SharedState,
    path: &Path,
    key: &str,
) -> Result<bool, ControllerError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(ControllerError::Io {
                action: "cannot read",
                path: path.to_owned(),
                source,
            })
        }
    };
    Ok(matches!(store.create(key, &bytes).await?, Written::Done(_)))
}

/// The names under `dir` (none when it does not exist).
async fn names_in(dir: &Path) -> Result<Vec<String>, ControllerError> {
    let io_error = |source| ControllerError::Io {
        action: "cannot list",
        path: dir.to_owned(),
        source,
    };
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(io_error(source)),
    };
    let mut names = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Copies the data dir's standalone state into the store, creating only what the store
/// lacks, so it runs once in effect however often it is called, and the store's own
/// records (written by other builders) always win.
pub async fn move_from_dir(
    store: &dyn SharedState,
    authorized_keys: &Path,
    apps_dir: &Path,
) -> Result<Moved, ControllerError> {
    let mut moved = Moved {
        authorized_keys: move_file(store, authorized_keys, &keys_key()).await?,
        ..Moved::default()
    };
    for name in names_in(apps_dir).await? {
        let Ok(app) = AppName::parse(&name) else {
            tracing::warn!(dir = %apps_dir.join(&name).display(), "not an app name; not moved");
            continue;
        };
        let app_dir = apps_dir.join(&name);
        if move_file(
            store,
            &app_dir.join("config.json"),
            &app_key(&app, "config.json"),
        )
        .await?
        {
            moved.configs += 1;
        }
        let mut highest = 0;
        for file in names_in(&app_dir.join("releases")).await? {
            let Some(version) = file
                .strip_prefix('v')
                .and_then(|rest| rest.strip_suffix(".json"))
                .and_then(|number| number.parse::<u64>().ok())
            else {
                continue;
            };
            highest = highest.max(version);
            let key = app_key(&app, &format!("releases/v{version}.json"));
            if move_file(store, &app_dir.join("releases").join(&file), &key).await? {
                moved.releases += 1;
            }
        }
        let (latest, hint_version) = hint(store, &app).await?;
        if highest > latest {
            advance_hint(store, &app, hint_version, highest).await;
        }
    }
    Ok(moved)
}
