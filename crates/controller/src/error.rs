//! Errors from either controller. `Display` is what the developer sees on `git push`, so
//! the HTTP status texts match what the Deis client SDK showed users. No variant ever
//! carries the builder key.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// 401: the controller refused the builder key.
    #[error("Unauthorized: Missing or Invalid Token")]
    Unauthorized,
    /// 403: the user may not act on this app.
    #[error("You do not have permission to perform this action.")]
    Forbidden,
    /// 404 on anything but the key lookup: the controller's own words.
    #[error("{0}")]
    NotFound(String),
    /// No user is registered for this key (404 on the key lookup, or not in the
    /// standalone `authorized_keys`).
    #[error("no user is registered for the key with fingerprint {fingerprint}")]
    UnknownKey { fingerprint: String },
    /// 422.
    #[error("Unable to process your request: {0}")]
    Unprocessable(String),
    /// 400 or 409: the controller's detail text.
    #[error("{detail}")]
    Rejected { status: u16, detail: String },
    /// 500.
    #[error("Internal Server Error")]
    InternalServerError,
    /// Any other non-success status.
    #[error("controller answered with unexpected HTTP status {status}{}", detail_suffix(.detail))]
    UnexpectedStatus { status: u16, detail: Option<String> },
    /// Connection refused, DNS failure, connection reset...
    #[error("controller unreachable at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// No complete answer within the configured timeout.
    #[error("controller unreachable at {url}: no answer within {}", human_duration(*.timeout))]
    Timeout { url: String, timeout: Duration },
    /// The reply did not have the expected shape; `problem` names the field.
    #[error("invalid reply from the controller to {call}: {problem}")]
    InvalidReply { call: &'static str, problem: String },
    /// A fingerprint that is not 16 lowercase hex pairs joined by `:`.
    #[error("invalid key fingerprint {0:?}: expected 16 lowercase hex pairs joined by ':'")]
    InvalidFingerprint(String),
    /// The builder asked for something malformed (bad sha, bad app name...).
    #[error("invalid controller request: {0}")]
    InvalidRequest(String),
    /// Bad controller settings (URL, builder key).
    #[error("invalid controller configuration: {0}")]
    InvalidConfig(String),
    /// Standalone: an app config file that is not a JSON object of plain values.
    #[error("invalid app config file {}: {problem}", path.display())]
    InvalidAppConfigFile { path: PathBuf, problem: String },
    /// Standalone on shared storage: the object store failed (the message names the key).
    #[error("{0}")]
    Storage(String),
    /// Standalone: reading or writing the data directory failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ControllerError {
    /// The HTTP status the controller answered with, when the error is one
    /// (an unknown key counts as 404, whichever controller reported it).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Unauthorized => Some(401),
            Self::Forbidden => Some(403),
            Self::NotFound(_) | Self::UnknownKey { .. } => Some(404),
            Self::Unprocessable(_) => Some(422),
            Self::Rejected { status, .. } | Self::UnexpectedStatus { status, .. } => Some(*status),
            Self::InternalServerError => Some(500),
            _ => None,
        }
    }

    /// Whether the key is simply not registered (deny auth quietly) rather than the
    /// controller failing (worth a log line, maybe a retry).
    pub fn is_unknown_key(&self) -> bool {
        matches!(self, Self::UnknownKey { .. })
    }

    /// Whether the controller could not be reached at all (or did not answer in time).
    pub fn is_unreachable(&self) -> bool {
        // A store that failed may have written the release: its outcome is unknown.
        matches!(
            self,
            Self::Unreachable { .. } | Self::Timeout { .. } | Self::Storage(_)
        )
    }
}

fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(detail) if !detail.is_empty() => format!(": {detail}"),
        _ => String::new(),
    }
}

fn human_duration(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_facing_texts() {
        assert_eq!(
            ControllerError::Unauthorized.to_string(),
            "Unauthorized: Missing or Invalid Token"
        );
        assert_eq!(
            ControllerError::Forbidden.to_string(),
            "You do not have permission to perform this action."
        );
        assert_eq!(
            ControllerError::Unprocessable("bad procfile".into()).to_string(),
            "Unable to process your request: bad procfile"
        );
        assert_eq!(
            ControllerError::InternalServerError.to_string(),
            "Internal Server Error"
        );
        assert_eq!(
            ControllerError::UnexpectedStatus {
                status: 502,
                detail: None
            }
            .to_string(),
            "controller answered with unexpected HTTP status 502"
        );
        assert_eq!(
            ControllerError::Timeout {
                url: "http://127.0.0.1:1".into(),
                timeout: Duration::from_secs(5)
            }
            .to_string(),
            "controller unreachable at http://127.0.0.1:1: no answer within 5s"
        );
        let unknown = ControllerError::UnknownKey {
            fingerprint: "aa".into(),
        };
        assert!(unknown.is_unknown_key());
        assert_eq!(unknown.status(), Some(404));
        assert!(!ControllerError::NotFound("x".into()).is_unknown_key());
    }
}
