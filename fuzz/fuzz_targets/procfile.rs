//! Procfiles come from pushed repositories and release YAML from buildpacks: parsing must
//! never panic, accepted names are valid process types, and the Procfile the builder
//! renders from the parsed types (and stores beside the slug) parses back to the same.
#![no_main]

use libfuzzer_sys::fuzz_target;

use deis_slug::{parse_procfile, parse_release_process_types, validate_process_type, ProcessTypes};

fn check(types: &ProcessTypes) {
    for name in types.names() {
        assert_eq!(
            validate_process_type(name),
            Ok(()),
            "accepted bad name {name:?}"
        );
        let command = types.get(name).expect("named type");
        assert!(!command.trim().is_empty(), "empty command for {name}");
    }
    if !types.is_empty() {
        let rendered = types.to_procfile();
        let reparsed = parse_procfile(&rendered)
            .unwrap_or_else(|e| panic!("rendered Procfile {rendered:?} does not parse: {e}"));
        assert_eq!(&reparsed, types, "Procfile round trip changed the types");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_procfile(text) {
        Ok(types) => {
            assert!(!types.is_empty());
            check(&types);
        }
        Err(error) => {
            let _ = error.to_string();
        }
    }
    match parse_release_process_types(text) {
        Ok(types) => check(&types),
        Err(error) => {
            let _ = error.to_string();
        }
    }
});
