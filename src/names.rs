//! Typed values parsed once at the edge: app names and commit ids.

use std::fmt;

/// Longest app name we accept: a DNS label, because app names become host names,
/// image repositories and object-key segments.
pub const MAX_APP_NAME_LEN: usize = 63;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("app name is empty")]
    EmptyApp,
    #[error("app name is longer than {MAX_APP_NAME_LEN} characters")]
    AppTooLong,
    #[error("invalid app name {0:?}: use lowercase letters, digits and single hyphens, starting with a letter or digit")]
    BadApp(String),
    #[error("invalid commit id {0:?}")]
    BadCommit(String),
}

/// A validated app name: lowercase letters, digits and single hyphens, no leading or
/// trailing hyphen, at most 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppName(String);

impl AppName {
    pub fn parse(name: &str) -> Result<AppName, NameError> {
        if name.is_empty() {
            return Err(NameError::EmptyApp);
        }
        if name.len() > MAX_APP_NAME_LEN {
            return Err(NameError::AppTooLong);
        }
        let valid_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid_chars || name.starts_with('-') || name.ends_with('-') || name.contains("--") {
            return Err(NameError::BadApp(printable(name)));
        }
        Ok(AppName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full commit id (40 hex digits for SHA-1 repositories, 64 for SHA-256 ones).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommitId(String);

impl CommitId {
    pub fn parse(id: &str) -> Result<CommitId, NameError> {
        let hex = id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if (id.len() == 40 || id.len() == 64) && hex {
            Ok(CommitId(id.to_owned()))
        } else {
            Err(NameError::BadCommit(printable(id)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 8-character form Deis uses in tags and object keys (`git-1234abcd`).
    pub fn short(&self) -> &str {
        &self.0[..8]
    }

    /// Git's all-zero id marks a ref creation (as old value) or deletion (as new value).
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }
}

impl fmt::Display for CommitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Shortens and escapes untrusted text before it goes into a message.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(80)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 80 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_names() {
        for good in ["myapp", "my-app", "a", "app2", "0app", &"a".repeat(63)] {
            assert!(AppName::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-app",
            "app-",
            "my--app",
            "MyApp",
            "my_app",
            "my.app",
            "../x",
            "a b",
            "app\0",
            &"a".repeat(64),
            "ümlaut",
        ] {
            assert!(AppName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn commit_ids() {
        let id = CommitId::parse("0123456789abcdef0123456789abcdef01234567").unwrap();
        assert_eq!(id.short(), "01234567");
        assert!(!id.is_zero());
        assert!(CommitId::parse(&"0".repeat(40)).unwrap().is_zero());
        for bad in ["", "xyz", &"A".repeat(40), &"a".repeat(39), &"a".repeat(41)] {
            assert!(CommitId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
