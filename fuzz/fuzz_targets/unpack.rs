//! Feeds arbitrary bytes to the slug unpacker as a tar stream and as a gzip'd slug: it
//! must never panic and never write anything outside the target directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

use deis_slug as unpack;

fuzz_target!(|data: &[u8]| {
    let sandbox = tempfile::tempdir().expect("temporary directory");
    let app = sandbox.path().join("app");
    let options = unpack::UnpackOptions::default();
    if data.first().is_some_and(|byte| *byte == 0x1f) {
        let _ = unpack::unpack_slug(data, &app, &options);
    } else {
        let _ = unpack::unpack_tar(data, &app, &options);
    }
    for entry in std::fs::read_dir(sandbox.path()).expect("read sandbox") {
        let name = entry.expect("sandbox entry").file_name();
        assert_eq!(
            name, "app",
            "the unpacker wrote outside its target directory"
        );
    }
});
