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
    #[error("invalid image reference {0:?}: expected [registry/]name[:tag][@digest] in lowercase")]
    BadImage(String),
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

/// A Docker image reference: `[registry[:port]/]path[:tag][@digest]`, validated with
/// the distribution grammar (lowercase path components, bounded tag), never guessed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry and path, e.g. `127.0.0.1:5000/team/app`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef, NameError> {
        let bad = || NameError::BadImage(printable(text));
        if text.is_empty()
            || text.len() > 512
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad());
        }
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest)),
            None => (text, None),
        };
        if let Some(digest) = digest {
            let (algorithm, hex) = digest.split_once(':').ok_or_else(bad)?;
            let hex_ok = hex.len() >= 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            if algorithm.is_empty()
                || !algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                || !hex_ok
            {
                return Err(bad());
            }
        }
        // A tag follows the last `:` after the last `/` (a `:` before it is a registry port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(tag) = tag {
            let mut bytes = tag.bytes();
            let first_ok =
                matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_');
            if !first_ok
                || tag.len() > 128
                || !bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(bad());
            }
        }
        let mut parts: Vec<&str> = repository.split('/').collect();
        if parts.len() > 1 && looks_like_registry(parts[0]) {
            let registry = parts.remove(0);
            let registry_ok = registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
            if !registry_ok {
                return Err(bad());
            }
        }
        if parts.is_empty() || !parts.iter().all(|p| valid_path_component(p)) {
            return Err(bad());
        }
        Ok(ImageRef {
            repository: repository.to_owned(),
            tag: tag.map(str::to_owned),
            digest: digest.map(str::to_owned),
        })
    }

    /// What to pull: the digest if given, else the tag (`latest` when none).
    pub fn pull_tag(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => digest.clone(),
            (None, Some(tag)) => tag.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// The registry host this image comes from, if the reference names one.
    pub fn registry(&self) -> Option<&str> {
        let (first, _) = self.repository.split_once('/')?;
        looks_like_registry(first).then_some(first)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Docker's rule: the first component is a registry when it has a `.` or `:` or is `localhost`.
fn looks_like_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn valid_path_component(component: &str) -> bool {
    // [a-z0-9]+ separated by one `.`, one or two `_`, or any number of `-`.
    let bytes = component.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    if component.contains("..")
        || component.contains("___")
        || component.contains("._")
        || component.contains("_.")
    {
        return false;
    }
    bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b))
}

/// `scheme://user:password@host/…` → `scheme://***@host/…`: a URL's user info is a
/// credential (a password or token) and never goes into a message or a log.
pub fn mask_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
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

/// Picks the commit to deploy from a pre-receive hook's ref updates (`<old> <new> <ref>`
/// lines). Only master and main deploy, one of them per push, and never a deletion.
pub fn select_commit(updates: &[String]) -> Result<CommitId, String> {
    let mut selected = None;
    for line in updates {
        let mut parts = line.split(' ');
        let (Some(_old), Some(new), Some(refname), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("malformed ref update {:?}", printable(line)));
        };
        let new = CommitId::parse(new).map_err(|e| e.to_string())?;
        let branch = refname.strip_prefix("refs/heads/");
        if new.is_zero() {
            return Err(format!(
                "deleting {} is not allowed here: the app keeps what it last deployed. To deploy another commit instead, run: git push --force deis <commit>:master",
                printable(branch.unwrap_or(refname))
            ));
        }
        match branch {
            Some("master" | "main") => {
                if selected.is_some() {
                    return Err("push master or main, not both at once".into());
                }
                selected = Some(new);
            }
            Some(other) => {
                return Err(format!(
                    "only the master or main branch deploys, not {}. To deploy it, run: git push deis HEAD:master",
                    printable(other)
                ))
            }
            None => {
                return Err(format!(
                    "only branches deploy, not {}. To deploy, run: git push deis HEAD:master",
                    printable(refname)
                ))
            }
        }
    }
    selected.ok_or_else(|| "nothing to deploy in this push".into())
}

/// A stack name as buildpacks compare it: 1 to 64 letters, digits, `-`, `_`, `.`.
pub fn is_stack_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "0000000000000000000000000000000000000000";
    const NEW: &str = "1111111111111111111111111111111111111111";

    fn update(new: &str, refname: &str) -> String {
        format!("{OLD} {new} {refname}")
    }

    #[test]
    fn master_and_main_deploy() {
        for r in ["refs/heads/master", "refs/heads/main"] {
            assert_eq!(select_commit(&[update(NEW, r)]).unwrap().as_str(), NEW);
        }
    }

    #[test]
    fn other_refs_and_deletions_are_refused_with_advice() {
        let err = select_commit(&[update(NEW, "refs/heads/feature")]).unwrap_err();
        assert!(err.contains("git push deis HEAD:master"), "{err}");
        let err = select_commit(&[update(NEW, "refs/tags/v1")]).unwrap_err();
        assert!(err.contains("git push deis HEAD:master"), "{err}");
        let err = select_commit(&[update(OLD, "refs/heads/master")]).unwrap_err();
        assert!(err.contains("deleting master"), "{err}");
        assert!(select_commit(&[
            update(NEW, "refs/heads/master"),
            update(NEW, "refs/heads/main")
        ])
        .is_err());
        assert!(select_commit(&[]).is_err());
        assert!(select_commit(&["garbage".into()]).is_err());
        assert!(select_commit(&[update("xyz", "refs/heads/master")]).is_err());
    }

    #[test]
    fn url_user_info_is_masked_in_any_scheme() {
        for (url, shown) in [
            ("http://u:p@h:3128", "http://***@h:3128"),
            ("socks5://token@h/x@y", "socks5://***@h/x@y"),
            ("https://h/path@x", "https://h/path@x"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(mask_url_credentials(url), shown);
        }
    }

    #[test]
    fn ref_errors_quote_untrusted_names_printably() {
        // Found by the `names` fuzz target: a deletion's message quoted the ref raw.
        let zero = "0".repeat(40);
        let line = format!("{zero} {zero} \u{7f}refs/x");
        let err = select_commit(&[line]).unwrap_err();
        assert!(!err.chars().any(char::is_control), "{err:?}");
    }

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

    #[test]
    fn image_references() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app:v1.2").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000/team/app", Some("v1.2"))
        );
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!((r.pull_tag(), r.registry()), ("latest".to_owned(), None));
        let digest = format!("app@sha256:{}", "a".repeat(64));
        assert_eq!(ImageRef::parse(&digest).unwrap().to_string(), digest);
        for bad in [
            "",
            "UPPER/app",
            "app:",
            "app:-x",
            "a b",
            "app::tag",
            "-app",
            "app/",
            "/app",
            "app@sha256:xyz",
            "a..b",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?}");
        }
    }
}
