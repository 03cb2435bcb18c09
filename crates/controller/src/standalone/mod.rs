//! The built-in controller for running without Deis: users come from an OpenSSH
//! `authorized_keys` file, app config and releases live in the data directory:
//!
//! ```text
//! <data_dir>/apps/<app>/config.json          {"KEY": "value", ...}
//! <data_dir>/apps/<app>/releases/v<N>.json   one file per release
//! ```
//!
//! With storage shared by several builders (S3), the same state lives in the object store
//! instead (`store.rs`), so every builder sees the same users, config and releases.

mod store;

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::authorized_keys;
use super::values::{config_values, json_type_name};
use super::{require_valid_fingerprint, AppConfig, AppName, Controller, ReleaseRequest};
use super::{ControllerError, User};

pub use store::{Moved, SharedState, Written};

/// Gives up allocating a release number after this many lost races in a row.
const MAX_RELEASE_ALLOCATION_ATTEMPTS: usize = 1000;

#[derive(Debug, Clone)]
pub struct StandaloneController {
    data_dir: PathBuf,
    authorized_keys: PathBuf,
    /// The shared store holding the state instead of the data dir, with replicas.
    store: Option<Arc<dyn SharedState>>,
    /// The last `authorized_keys` read from the store: used while the store cannot be
    /// reached, so an outage of the store does not lock every developer out.
    last_keys: Arc<std::sync::Mutex<Option<(String, PathBuf)>>>,
}

impl StandaloneController {
    pub fn new(data_dir: PathBuf, authorized_keys: PathBuf) -> Self {
        Self {
            data_dir,
            authorized_keys,
            store: None,
            last_keys: Arc::default(),
        }
    }

    /// State in `store` (shared by several builders) instead of the data dir.
    pub fn in_store(mut self, store: Arc<dyn SharedState>) -> Self {
        self.store = Some(store);
        self
    }

    /// An app's directory; an [`AppName`] is one safe path segment.
    fn app_dir(&self, app: &AppName) -> PathBuf {
        self.data_dir.join("apps").join(app.as_str())
    }

    /// The `authorized_keys` text and where it came from; `None` when there is none.
    async fn authorized_keys_text(&self) -> Result<Option<(String, PathBuf)>, ControllerError> {
        if let Some(store) = &self.store {
            let last = || {
                self.last_keys
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            return match store::authorized_keys(store.as_ref()).await {
                Ok(keys) => {
                    last().clone_from(&keys);
                    Ok(keys)
                }
                Err(error) => match last().clone() {
                    Some(keys) => {
                        tracing::warn!(%error, "cannot read authorized_keys from the store; using the copy read last");
                        Ok(Some(keys))
                    }
                    None => Err(error),
                },
            };
        }
        match tokio::fs::read_to_string(&self.authorized_keys).await {
            Ok(text) => Ok(Some((text, self.authorized_keys.clone()))),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ControllerError::Io {
                action: "cannot read",
                path: self.authorized_keys.clone(),
                source,
            }),
        }
    }

    /// Every usable key, in file order. No file means no users.
    async fn read_authorized_keys(
        &self,
    ) -> Result<Vec<authorized_keys::AuthorizedKey>, ControllerError> {
        let Some((text, path)) = self.authorized_keys_text().await? else {
            tracing::debug!(path = %self.authorized_keys.display(), "no authorized_keys, so no users");
            return Ok(Vec::new());
        };
        Ok(authorized_keys::parse(&text, &path))
    }

    /// An app's `config.json` and where it came from; `None` when there is none.
    async fn config_bytes(
        &self,
        app: &AppName,
    ) -> Result<Option<(Vec<u8>, PathBuf)>, ControllerError> {
        if let Some(store) = &self.store {
            return store::app_config(store.as_ref(), app).await;
        }
        let path = self.app_dir(app).join("config.json");
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some((bytes, path))),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ControllerError::Io {
                action: "cannot read",
                path,
                source,
            }),
        }
    }

    /// Moves this data dir's state into the store, once: what the store already has
    /// stays. Safe to run at every start (a second run moves nothing).
    pub async fn move_into_store(&self) -> Result<Moved, ControllerError> {
        let Some(store) = &self.store else {
            return Ok(Moved::default());
        };
        store::move_from_dir(
            store.as_ref(),
            &self.authorized_keys,
            &self.data_dir.join("apps"),
        )
        .await
    }
}

#[async_trait::async_trait]
impl Controller for StandaloneController {
    async fn user_for_key(&self, fingerprint: &str) -> Result<User, ControllerError> {
        require_valid_fingerprint(fingerprint)?;
        // Re-read on every lookup so keys can be added without a restart.
        let keys = self.read_authorized_keys().await?;
        let unknown = || ControllerError::UnknownKey {
            fingerprint: fingerprint.to_string(),
        };
        let key = keys
            .into_iter()
            .find(|key| key.fingerprint == fingerprint)
            .ok_or_else(unknown)?;
        if !key.ignored_options.is_empty() {
            tracing::warn!(
                path = %self.authorized_keys.display(),
                user = %key.username,
                options = ?key.ignored_options,
                "authorized_keys options ignored: the builder serves git only"
            );
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if key.expires_at.is_some_and(|expiry| now >= expiry) {
            tracing::info!(user = %key.username, %fingerprint, "key refused: its expiry-time has passed");
            return Err(unknown());
        }
        Ok(User {
            username: key.username,
            apps: None,
            from: key.from,
        })
    }

    async fn app_config(&self, _user: &str, app: &AppName) -> Result<AppConfig, ControllerError> {
        let Some((bytes, path)) = self.config_bytes(app).await? else {
            return Ok(AppConfig::default());
        };
        let invalid = |problem: String| ControllerError::InvalidAppConfigFile {
            path: path.clone(),
            problem,
        };
        let values = match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(object)) => config_values(&object).map_err(invalid)?,
            Ok(other) => {
                return Err(invalid(format!(
                    "expected a JSON object of strings, got {}",
                    json_type_name(&other)
                )))
            }
            Err(err) => return Err(invalid(format!("not valid JSON ({err})"))),
        };
        Ok(AppConfig { values })
    }

    async fn release(&self, build: &ReleaseRequest<'_>) -> Result<u64, ControllerError> {
        let short_sha = build.short_sha()?;
        let record = |version: u64| release_record(build, short_sha, version);
        let version = match &self.store {
            Some(store) => store::create_release(store.as_ref(), build.app, &record).await?,
            None => self.create_release_file(build.app, &record).await?,
        };
        tracing::info!(app = %build.app, version, "release recorded");
        Ok(version)
    }

    async fn check(&self) -> Result<(), ControllerError> {
        Ok(())
    }

    fn describe(&self) -> String {
        match &self.store {
            Some(store) => format!(
                "standalone controller (keys, config and releases in {})",
                store.describe()
            ),
            None => format!(
                "standalone controller (keys from {}, data in {})",
                self.authorized_keys.display(),
                self.data_dir.display()
            ),
        }
    }
}

impl StandaloneController {
    /// Creates the next `v<N>.json` of `app` in the data dir; returns N.
    async fn create_release_file(
        &self,
        app: &AppName,
        record: &(dyn Fn(u64) -> Vec<u8> + Sync),
    ) -> Result<u64, ControllerError> {
        let releases_dir = self.app_dir(app).join("releases");
        tokio::fs::create_dir_all(&releases_dir)
            .await
            .map_err(|source| ControllerError::Io {
                action: "cannot create",
                path: releases_dir.clone(),
                source,
            })?;

        for _ in 0..MAX_RELEASE_ALLOCATION_ATTEMPTS {
            let version = highest_release(&releases_dir).await? + 1;
            let path = releases_dir.join(format!("v{version}.json"));
            // create_new is the allocation: of two writers picking the same N, exactly
            // one creates the file; the other sees AlreadyExists and picks again.
            let mut file = match tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .await
            {
                Ok(file) => file,
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(ControllerError::Io {
                        action: "cannot create",
                        path,
                        source,
                    })
                }
            };
            let text = record(version);
            let written = async {
                file.write_all(&text).await?;
                file.sync_all().await
            }
            .await;
            if let Err(source) = written {
                return Err(ControllerError::Io {
                    action: "cannot write",
                    path,
                    source,
                });
            }
            return Ok(version);
        }
        Err(too_much_contention(app))
    }
}

fn too_much_contention(app: &AppName) -> ControllerError {
    ControllerError::InvalidRequest(format!(
        "could not allocate a release number for {app} (too much contention)"
    ))
}

/// The JSON record of release `version` of `build`.
fn release_record(build: &ReleaseRequest<'_>, short_sha: &str, version: u64) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0);
    let record = json!({
        "version": version,
        "user": build.user,
        "app": build.app.as_str(),
        "sha": build.sha,
        "short_sha": short_sha,
        "image": build.artifact.reference(),
        "procfile": build.procfile,
        "dockerfile": build.artifact.is_image(),
        "created": rfc3339_utc(now),
    });
    let mut text = serde_json::to_vec_pretty(&record).unwrap_or_default();
    text.push(b'\n');
    text
}

/// The highest N among `v<N>.json` in `dir` (0 when there is none).
async fn highest_release(dir: &Path) -> Result<u64, ControllerError> {
    let io_error = |source| ControllerError::Io {
        action: "cannot list",
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = tokio::fs::read_dir(dir).await.map_err(io_error)?;
    let mut highest = 0;
    while let Some(entry) = entries.next_entry().await.map_err(io_error)? {
        let name = entry.file_name();
        let version = name
            .to_str()
            .and_then(|name| name.strip_prefix('v'))
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(|number| number.parse::<u64>().ok());
        if let Some(version) = version {
            highest = highest.max(version);
        }
    }
    Ok(highest)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
fn rfc3339_utc(unix_seconds: u64) -> String {
    let days = unix_seconds / 86_400;
    let second_of_day = unix_seconds % 86_400;
    let (year, month, day) = civil_date_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        second_of_day / 3600,
        second_of_day % 3600 / 60,
        second_of_day % 60
    )
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01, counting
/// in 400-year eras that start on March 1st so leap days fall at the end of a year.
fn civil_date_from_days(days_since_epoch: u64) -> (u64, u64, u64) {
    // 719_468 days lie between 0000-03-01 and 1970-01-01.
    let days = days_since_epoch + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use crate::Artifact;

    use super::*;
    use crate::tests::{ED25519_LINE, ED25519_MD5};

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn controller(dir: &Path) -> StandaloneController {
        StandaloneController::new(dir.join("data"), dir.join("authorized_keys"))
    }

    fn key_without_comment() -> String {
        ED25519_LINE.rsplit_once(' ').unwrap().0.to_string()
    }

    #[tokio::test]
    async fn users_come_from_authorized_keys_reread_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = controller(dir.path());
        let err = standalone.user_for_key(ED25519_MD5).await.unwrap_err();
        assert!(err.is_unknown_key(), "missing file means no users: {err}");

        std::fs::write(dir.path().join("authorized_keys"), "# nobody yet\n\n").unwrap();
        assert!(standalone
            .user_for_key(ED25519_MD5)
            .await
            .unwrap_err()
            .is_unknown_key());

        // Added while "running": seen on the next lookup.
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("# team\n\n{ED25519_LINE}\n"),
        )
        .unwrap();
        let user = standalone.user_for_key(ED25519_MD5).await.unwrap();
        assert_eq!(user.username, "alice@example");
        assert_eq!(user.apps, None);
        assert!(user.may_push("any-app"));
    }

    #[tokio::test]
    async fn key_without_comment_gets_a_generated_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("authorized_keys"),
            format!("{}\n", key_without_comment()),
        )
        .unwrap();
        let user = controller(dir.path())
            .user_for_key(ED25519_MD5)
            .await
            .unwrap();
        assert_eq!(user.username, "user-9a40ac2c");
    }

    #[tokio::test]
    async fn expired_keys_are_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = controller(dir.path());
        let write = |expiry: &str| {
            let line = format!("expiry-time=\"{expiry}\",no-pty {ED25519_LINE}\n");
            std::fs::write(dir.path().join("authorized_keys"), line).unwrap();
        };
        write("20200101");
        let err = standalone.user_for_key(ED25519_MD5).await.unwrap_err();
        assert!(err.is_unknown_key(), "{err}");
        write("99990101");
        let user = standalone.user_for_key(ED25519_MD5).await.unwrap();
        assert_eq!(user.username, "alice@example");
    }

    #[tokio::test]
    async fn malformed_fingerprint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = controller(dir.path())
            .user_for_key("not-a-fingerprint")
            .await
            .unwrap_err();
        assert!(matches!(err, ControllerError::InvalidFingerprint(_)));
    }

    #[tokio::test]
    async fn app_config_from_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = controller(dir.path());
        assert!(standalone
            .app_config("alice", &AppName::parse("web").unwrap())
            .await
            .unwrap()
            .values
            .is_empty());

        let app_dir = dir.path().join("data/apps/web");
        std::fs::create_dir_all(&app_dir).unwrap();
        std::fs::write(
            app_dir.join("config.json"),
            r#"{"BUILDPACK_URL": "https://x/y.git", "DEIS_DISABLE_CACHE": "1"}"#,
        )
        .unwrap();
        let config = standalone
            .app_config("alice", &AppName::parse("web").unwrap())
            .await
            .unwrap();
        assert_eq!(config.get("BUILDPACK_URL"), Some("https://x/y.git"));
        assert!(config.contains("DEIS_DISABLE_CACHE"));

        for bad in ["{not json", "[1,2]", r#"{"A": {"b": 1}}"#] {
            std::fs::write(app_dir.join("config.json"), bad).unwrap();
            let err = standalone
                .app_config("alice", &AppName::parse("web").unwrap())
                .await
                .unwrap_err();
            assert!(matches!(err, ControllerError::InvalidAppConfigFile { .. }));
            assert!(err.to_string().contains("config.json"), "{err}");
        }
    }

    #[tokio::test]
    async fn releases_are_numbered_and_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = controller(dir.path());
        standalone.check().await.unwrap();
        let procfile = BTreeMap::from([("web".to_string(), "./run".to_string())]);
        let build = ReleaseRequest {
            user: "alice",
            app: &AppName::parse("web").unwrap(),
            sha: SHA,
            artifact: &Artifact::Slug("home/web:git-01234567/push/slug.tgz".into()),
            procfile: &procfile,
        };
        assert_eq!(standalone.release(&build).await.unwrap(), 1);
        assert_eq!(standalone.release(&build).await.unwrap(), 2);
        let other = ReleaseRequest {
            app: &AppName::parse("api").unwrap(),
            ..build
        };
        assert_eq!(standalone.release(&other).await.unwrap(), 1);

        let releases = dir.path().join("data/apps/web/releases");
        // A gap (say, a removed release) never leads to reusing a number below the top.
        std::fs::write(releases.join("v9.json"), "{}").unwrap();
        std::fs::write(releases.join("notes.txt"), "").unwrap();
        assert_eq!(standalone.release(&build).await.unwrap(), 10);

        let record: Value =
            serde_json::from_slice(&std::fs::read(releases.join("v2.json")).unwrap()).unwrap();
        assert_eq!(record["version"], 2);
        assert_eq!(record["user"], "alice");
        assert_eq!(record["app"], "web");
        assert_eq!(record["sha"], SHA);
        assert_eq!(record["short_sha"], "01234567");
        assert_eq!(record["image"], "home/web:git-01234567/push/slug.tgz");
        assert_eq!(record["procfile"]["web"], "./run");
        assert_eq!(record["dockerfile"], false);
        assert!(record["created"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_releases_get_distinct_versions() {
        let dir = tempfile::tempdir().unwrap();
        let standalone = Arc::new(controller(dir.path()));
        let releases: Vec<_> = (0..24)
            .map(|_| {
                let standalone = Arc::clone(&standalone);
                tokio::spawn(async move {
                    let procfile = BTreeMap::new();
                    let build = ReleaseRequest {
                        user: "alice",
                        app: &AppName::parse("web").unwrap(),
                        sha: SHA,
                        artifact: &Artifact::Image("img".into()),
                        procfile: &procfile,
                    };
                    standalone.release(&build).await.unwrap()
                })
            })
            .collect();
        let mut versions = BTreeSet::new();
        for release in releases {
            assert!(versions.insert(release.await.unwrap()), "duplicate version");
        }
        assert_eq!(versions, (1..=24).collect::<BTreeSet<u64>>());
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(4_102_444_800), "2100-01-01T00:00:00Z");
    }
}
