use super::StorageError;

/// The longest key S3 accepts, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Validates object keys: non-empty, ≤ 1024 bytes, no leading `/`, no `..`/`.` segments, no
/// empty segments, no NUL/control chars. Deis keys contain `:`
/// (`home/app:git-1234abcd/push/slug.tgz`) and pass.
///
/// The same rules for both backends keep the key layout portable, and make a key safe to map
/// onto a path under the local root.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let reject = |reason: &'static str| {
        Err(StorageError::InvalidKey {
            key: key.to_owned(),
            reason,
        })
    };
    if key.is_empty() {
        return reject("the key is empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return reject("the key is longer than 1024 bytes");
    }
    if key.chars().any(char::is_control) {
        return reject("the key contains a control character");
    }
    if key.starts_with('/') {
        return reject("the key starts with '/'");
    }
    for segment in key.split('/') {
        match segment {
            "" => return reject("the key has an empty path segment ('//' or a trailing '/')"),
            "." | ".." => return reject("the key has a '.' or '..' path segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_validation_table() {
        let long_ok = "a".repeat(MAX_KEY_BYTES);
        let too_long = "a".repeat(MAX_KEY_BYTES + 1);
        let cases: &[(&str, bool)] = &[
            ("home/app:git-1234abcd/tar", true),
            ("home/app:git-1234abcd/push/slug.tgz", true),
            ("home/app:git-1234abcd/push/Procfile", true),
            ("home/app/cache/cache.tgz", true),
            ("slug.tgz", true),
            ("a/.hidden/b..c/...", true),
            ("dir with space/ünïcode", true),
            (&long_ok, true),
            ("", false),
            (&too_long, false),
            ("/home/app/tar", false),
            ("home//tar", false),
            ("home/tar/", false),
            ("/", false),
            (".", false),
            ("..", false),
            ("../etc/passwd", false),
            ("home/../../etc/passwd", false),
            ("home/./tar", false),
            ("home/..", false),
            ("home/a\0b", false),
            ("home/a\nb", false),
            ("home/a\x7fb", false),
            ("home/a\u{85}b", false),
        ];
        for (key, valid) in cases {
            assert_eq!(
                validate_key(key).is_ok(),
                *valid,
                "key {key:?} should be {}",
                if *valid { "accepted" } else { "rejected" }
            );
        }
    }

    #[test]
    fn rejection_names_the_key() {
        let message = validate_key("../x").unwrap_err().to_string();
        assert!(message.contains("\"../x\""), "{message}");
        assert!(message.contains(".."), "{message}");
    }
}
