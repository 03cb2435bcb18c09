//! App names, commit ids, image references and the pre-receive ref updates are parsed
//! from untrusted text: no panics, and whatever is accepted has the promised shape and
//! survives a render/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

use deis_types::names::{select_commit, AppName, CommitId, ImageRef, MAX_APP_NAME_LEN};

fn check_app_name(text: &str) {
    if let Ok(app) = AppName::parse(text) {
        let name = app.as_str();
        assert_eq!(name, text);
        assert!(!name.is_empty() && name.len() <= MAX_APP_NAME_LEN);
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert!(!name.starts_with('-') && !name.ends_with('-') && !name.contains("--"));
        // It becomes a path segment, an image repository and a host name.
        assert!(!name.contains('/') && name != "." && name != "..");
        assert_eq!(AppName::parse(&app.to_string()), Ok(app));
    }
}

fn check_commit(text: &str) {
    if let Ok(commit) = CommitId::parse(text) {
        assert!(text.len() == 40 || text.len() == 64);
        assert_eq!(commit.short(), &text[..8]);
        assert_eq!(commit.is_zero(), text.bytes().all(|b| b == b'0'));
    }
}

fn check_image(text: &str) {
    if let Ok(image) = ImageRef::parse(text) {
        assert!(!text.chars().any(|c| c.is_whitespace() || c.is_control()));
        let again = ImageRef::parse(&image.to_string()).expect("a rendered reference parses");
        assert_eq!(again, image);
        assert!(!image.pull_tag().is_empty());
        if let Some(registry) = image.registry() {
            assert!(image.repository.starts_with(registry));
        }
    }
}

fn check_ref_updates(text: &str) {
    let updates: Vec<String> = text.split('\n').map(str::to_owned).collect();
    match select_commit(&updates) {
        Ok(commit) => {
            assert!(!commit.is_zero(), "a deletion was selected");
            let deploying: Vec<&String> = updates
                .iter()
                .filter(|line| {
                    line.ends_with(" refs/heads/master") || line.ends_with(" refs/heads/main")
                })
                .collect();
            assert_eq!(deploying.len(), 1, "exactly one of master/main deploys");
            assert_eq!(updates.len(), 1, "other refs must be refused: {updates:?}");
            assert_eq!(deploying[0].split(' ').nth(1), Some(commit.as_str()));
        }
        Err(message) => assert!(
            !message.chars().any(char::is_control),
            "error message with control characters: {message:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check_app_name(text);
    check_commit(text);
    check_image(text);
    check_ref_updates(text);
});
