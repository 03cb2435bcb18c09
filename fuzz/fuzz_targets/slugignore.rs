//! `.slugignore` (and `.dockerignore`) patterns come from pushed repositories: parsing and
//! matching must never panic, and a pattern spelling a path literally (every character
//! escaped, anchored at the root) must match exactly that path.
#![no_main]

use libfuzzer_sys::fuzz_target;

use deis_slug::SlugIgnore;

/// `/` + the path with every character of each component escaped.
fn literal_pattern(path: &str) -> String {
    let mut pattern = String::from("/");
    for (i, component) in path.split('/').enumerate() {
        if i > 0 {
            pattern.push('/');
        }
        for c in component.chars() {
            pattern.push('\\');
            pattern.push(c);
        }
    }
    pattern
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // First line: a path to test; the rest: the ignore file.
    let (path, rules) = text.split_once('\n').unwrap_or((text, ""));
    let slugignore = SlugIgnore::parse(rules);
    let dockerignore = SlugIgnore::parse_dockerignore(rules);
    for is_dir in [false, true] {
        let _ = slugignore.is_ignored(path, is_dir);
        let _ = dockerignore.is_ignored(path, is_dir);
    }
    for warning in slugignore.warnings() {
        assert!(!warning.is_empty());
    }
    assert!(!SlugIgnore::empty().is_ignored(path, false));

    // A clean relative path: non-empty components, no `.`/`..`, no whitespace or control
    // characters at the ends (the parser trims line ends), nothing the escape cannot carry.
    let clean = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && !c.chars().any(|ch| ch.is_control() || ch == '\u{feff}')
        })
        && !path.ends_with([' ', '\t']);
    if clean {
        let pattern = literal_pattern(path);
        let literal = SlugIgnore::parse(&pattern);
        assert!(
            literal.is_ignored(path, false),
            "pattern {pattern:?} does not match {path:?}"
        );
        let nested = format!("{path}/inside");
        assert!(
            literal.is_ignored(&nested, false),
            "pattern {pattern:?} does not take {nested:?} with it"
        );
    }
});
