//! Replies of the Deis controller are untrusted: parsing must never panic, and whatever is
//! accepted upholds what the rest of the builder relies on (config keys are environment
//! variable names, so they can become ENV_DIR file names; no NUL in values; non-empty
//! user names without control characters; positive release versions; error details are
//! one printable, bounded line).
#![no_main]

use libfuzzer_sys::fuzz_target;

use deis_controller::reply::{parse_config, parse_release_version, parse_user, reply_detail};

fuzz_target!(|data: &[u8]| {
    if let Ok(user) = parse_user(data) {
        assert!(!user.username.trim().is_empty());
        assert!(!user.username.chars().any(char::is_control));
        assert!(user.apps.is_some(), "the controller always lists the apps");
        let again = serde_json::json!({"username": user.username, "apps": user.apps});
        assert_eq!(parse_user(again.to_string().as_bytes()), Ok(user));
    }
    if let Ok(config) = parse_config(data) {
        for (key, value) in &config.values {
            let mut bytes = key.bytes();
            let first = bytes.next().expect("non-empty key");
            assert!(first.is_ascii_alphabetic() || first == b'_', "key {key:?}");
            assert!(
                bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "key {key:?}"
            );
            assert!(!value.contains('\0'), "NUL in {key}");
        }
        let again = serde_json::json!({"values": config.values});
        assert_eq!(parse_config(again.to_string().as_bytes()), Ok(config));
    }
    if let Ok(version) = parse_release_version(data) {
        assert!(version > 0);
    }
    if let Some(detail) = reply_detail(data) {
        assert!(!detail.is_empty());
        assert!(!detail.chars().any(char::is_control), "{detail:?}");
        assert!(detail.chars().count() <= 301, "detail is not bounded");
    }
});
