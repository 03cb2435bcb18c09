//! The controller: who owns a key, which apps they may push, an app's config, and
//! cutting a release after a successful build.
//!
//! Two implementations share the [`Controller`] trait:
//! - [`DeisController`] speaks the Deis Workflow controller hooks API v2 over HTTP;
//! - [`StandaloneController`] keeps everything on this machine (an `authorized_keys`
//!   file for users, the data directory for app config and releases).
//!
//! Everything the controller answers is parsed and validated here, at the edge, so the
//! rest of the builder only sees typed values.

mod authorized_keys;
mod deis;
mod error;
/// Reply parsing, public so the fuzz targets and tests can reach it.
pub mod reply;
mod standalone;
mod values;

use std::collections::BTreeMap;

use md5::{Digest, Md5};

pub use deis_types::names::AppName;

pub use authorized_keys::SourcePatterns;
pub use deis::DeisController;
pub use error::ControllerError;
pub use standalone::{Moved, SharedState, StandaloneController, Written};

/// A developer the controller knows, identified by one of their SSH keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub username: String,
    /// Apps the user may push to. `None` means any app (standalone mode).
    pub apps: Option<Vec<String>>,
    /// Client addresses the key may be used from (`from=` in `authorized_keys`);
    /// `None` means anywhere.
    pub from: Option<SourcePatterns>,
}

impl User {
    /// Whether this user may push `app`. Exact name match only: the old builder's
    /// substring match let `foo` push to `foobar`.
    pub fn may_push(&self, app: &str) -> bool {
        match &self.apps {
            None => true,
            Some(apps) => apps.iter().any(|owned| owned == app),
        }
    }

    /// Whether the key may be used from this client address.
    pub fn may_connect_from(&self, client: std::net::IpAddr) -> bool {
        self.from
            .as_ref()
            .is_none_or(|patterns| patterns.allows(client))
    }
}

/// An app's config variables (environment), validated: every key is a valid
/// environment variable name and no value contains a NUL byte.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppConfig {
    pub values: BTreeMap<String, String>,
}

impl AppConfig {
    /// The value of one config variable, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Whether a config variable is present at all (some switches, like
    /// `DEIS_DISABLE_CACHE`, act on presence, whatever their value).
    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }
}

/// What a finished build asks the controller to release.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseRequest<'a> {
    pub user: &'a str,
    pub app: &'a AppName,
    /// The full commit sha (for an import, the image digest's hex); only its first 8
    /// characters go on the wire.
    pub sha: &'a str,
    pub artifact: &'a Artifact,
    /// Process types from the Procfile: type -> command.
    pub procfile: &'a BTreeMap<String, String>,
}

/// What a build produced for the release to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifact {
    /// The slug's object key (buildpack builds).
    Slug(String),
    /// The image reference (Dockerfile builds and imports).
    Image(String),
}

impl Artifact {
    /// The slug key or image reference, as the controller's `image` field carries it.
    pub fn reference(&self) -> &str {
        match self {
            Artifact::Slug(key) => key,
            Artifact::Image(reference) => reference,
        }
    }

    pub fn is_image(&self) -> bool {
        matches!(self, Artifact::Image(_))
    }
}

impl ReleaseRequest<'_> {
    /// The short sha the controller and the object layout use (first 8 hex chars).
    /// Fails when the sha is not at least 8 hex characters.
    pub fn short_sha(&self) -> Result<&str, ControllerError> {
        let valid = self.sha.len() >= 8 && self.sha.bytes().all(|b| b.is_ascii_hexdigit());
        match self.sha.get(..8) {
            Some(short) if valid => Ok(short),
            _ => Err(ControllerError::InvalidRequest(format!(
                "commit sha {:?} is not a hex sha of at least 8 characters",
                self.sha
            ))),
        }
    }
}

#[async_trait::async_trait]
pub trait Controller: Send + Sync + std::fmt::Debug {
    /// The user owning the key with this fingerprint (see [`md5_fingerprint`]).
    /// An unregistered key is [`ControllerError::UnknownKey`].
    async fn user_for_key(&self, fingerprint: &str) -> Result<User, ControllerError>;
    /// The config of `app`, as seen by `user` (who must be allowed to see it).
    async fn app_config(&self, user: &str, app: &AppName) -> Result<AppConfig, ControllerError>;
    /// Cuts a release, returns its version N (for "Done, app:vN deployed").
    async fn release(&self, request: &ReleaseRequest<'_>) -> Result<u64, ControllerError>;
    /// Readiness (Deis: `GET /healthz` answers 200).
    async fn check(&self) -> Result<(), ControllerError>;
    /// A one-line description for logs; never contains secrets.
    fn describe(&self) -> String;
}

/// MD5 fingerprint of an SSH public key wire blob (the base64-decoded second field of an
/// `authorized_keys` line): lowercase hex pairs joined by `:`, 47 characters.
pub fn md5_fingerprint(key_blob: &[u8]) -> String {
    let digest = Md5::digest(key_blob);
    let pairs: Vec<String> = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    pairs.join(":")
}

/// Whether `fingerprint` has the exact shape [`md5_fingerprint`] produces:
/// 16 lowercase hex pairs joined by `:`.
pub fn is_valid_fingerprint(fingerprint: &str) -> bool {
    let pairs: Vec<&str> = fingerprint.split(':').collect();
    pairs.len() == 16
        && pairs.iter().all(|pair| {
            pair.len() == 2
                && pair
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

/// Rejects a malformed fingerprint before it is sent anywhere or looked up.
fn require_valid_fingerprint(fingerprint: &str) -> Result<(), ControllerError> {
    if is_valid_fingerprint(fingerprint) {
        Ok(())
    } else {
        Err(ControllerError::InvalidFingerprint(
            values::printable_snippet(fingerprint),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    /// Generated once with `ssh-keygen -t ed25519 -C alice@example`.
    pub(crate) const ED25519_LINE: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID+/z68oL1SaZ51+ahP231HejGfq1L0kGw/wkV0idZfY alice@example";
    /// From `ssh-keygen -l -E md5 -f` on that key.
    pub(crate) const ED25519_MD5: &str = "9a:40:ac:2c:85:77:ac:34:ee:11:21:4a:eb:18:a2:27";

    #[test]
    fn fingerprint_matches_ssh_keygen() {
        let blob_b64 = ED25519_LINE.split_whitespace().nth(1).unwrap();
        let blob = base64::engine::general_purpose::STANDARD
            .decode(blob_b64)
            .unwrap();
        let fingerprint = md5_fingerprint(&blob);
        assert_eq!(fingerprint, ED25519_MD5);
        assert_eq!(fingerprint.len(), 47);
        assert!(is_valid_fingerprint(&fingerprint));
    }

    #[test]
    fn fingerprint_shape_is_checked() {
        assert!(!is_valid_fingerprint(""));
        assert!(!is_valid_fingerprint(&ED25519_MD5.to_uppercase()));
        assert!(!is_valid_fingerprint(&ED25519_MD5[3..]));
        assert!(!is_valid_fingerprint(&format!("{ED25519_MD5}:00")));
        assert!(!is_valid_fingerprint(
            "9a:40:ac:2c:85:77:ac:34:ee:11:21:4a:eb:18:a2:2g"
        ));
        assert!(!is_valid_fingerprint(
            "9a:40:ac:2c:85:77:ac:34:ee:11:21:4a:eb:18:a2:../"
        ));
        assert!(require_valid_fingerprint("../etc").is_err());
    }

    #[test]
    fn may_push_is_exact() {
        let user = User {
            username: "alice".into(),
            apps: Some(vec!["foobar".into(), "web".into()]),
            from: None,
        };
        assert!(user.may_push("web"));
        assert!(user.may_push("foobar"));
        assert!(!user.may_push("foo"));
        assert!(!user.may_push("bar"));
        assert!(!user.may_push("we"));
        assert!(!user.may_push(""));
        let anyone = User {
            username: "bob".into(),
            apps: None,
            from: None,
        };
        assert!(anyone.may_push("anything"));
        let nobody = User {
            username: "carol".into(),
            apps: Some(vec![]),
            from: None,
        };
        assert!(!nobody.may_push("web"));
    }

    #[test]
    fn short_sha_needs_eight_hex_chars() {
        let procfile = BTreeMap::new();
        let artifact = Artifact::Slug("img".into());
        let app = AppName::parse("web").unwrap();
        let mut hook = ReleaseRequest {
            user: "alice",
            app: &app,
            sha: "0123456789abcdef0123456789abcdef01234567",
            artifact: &artifact,
            procfile: &procfile,
        };
        assert_eq!(hook.short_sha().unwrap(), "01234567");
        hook.sha = "0123456";
        assert!(hook.short_sha().is_err());
        hook.sha = "0123456z";
        assert!(hook.short_sha().is_err());
        hook.sha = "ééééééééé";
        assert!(hook.short_sha().is_err());
    }
}
