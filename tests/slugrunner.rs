//! The slug runner: safe unpacking (a table of malicious slugs and a bounded mutation
//! fuzzer, against the library) and the runner image running slugs in real containers
//! (a slug from the real pipeline in S3, SIGTERM delivery, checksums, every slug source).

mod util;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deis_slug::{self as slug, PackOptions, SlugIgnore, SlugLayout, UnpackError, UnpackOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

// ------------------------------------------------------------------ raw tar fixtures

/// Builds tar archives byte by byte, so entries the `tar` crate's builder refuses to write
/// (`..`, absolute names, devices, lying sizes) can be made.
#[derive(Default, Clone)]
struct RawTar {
    bytes: Vec<u8>,
}

const ENTRY_FILE: u8 = b'0';
const ENTRY_HARDLINK: u8 = b'1';
const ENTRY_SYMLINK: u8 = b'2';
const ENTRY_CHAR: u8 = b'3';
const ENTRY_BLOCK: u8 = b'4';
const ENTRY_DIR: u8 = b'5';
const ENTRY_FIFO: u8 = b'6';

impl RawTar {
    fn header(name: &[u8], kind: u8, mode: u32, link: &[u8], size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        {
            let gnu = header.as_gnu_mut().unwrap();
            let name_len = name.len().min(gnu.name.len());
            gnu.name[..name_len].copy_from_slice(&name[..name_len]);
            let link_len = link.len().min(gnu.linkname.len());
            gnu.linkname[..link_len].copy_from_slice(&link[..link_len]);
        }
        header.set_entry_type(tar::EntryType::new(kind));
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(315_532_800);
        header.set_cksum();
        header
    }

    fn push(mut self, header: &tar::Header, data: &[u8]) -> Self {
        self.bytes.extend_from_slice(header.as_bytes());
        self.bytes.extend_from_slice(data);
        let padding = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, padding));
        self
    }

    fn entry(self, name: &[u8], kind: u8, mode: u32, link: &[u8], data: &[u8]) -> Self {
        let tar = if name.len() > 100 {
            self.long_name(name)
        } else {
            self
        };
        let header = Self::header(name, kind, mode, link, data.len() as u64);
        tar.push(&header, data)
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), ENTRY_FILE, 0o644, b"", data)
    }

    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), ENTRY_DIR, 0o755, b"", b"")
    }

    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            ENTRY_SYMLINK,
            0o777,
            target.as_bytes(),
            b"",
        )
    }

    fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            ENTRY_HARDLINK,
            0o644,
            target.as_bytes(),
            b"",
        )
    }

    fn special(self, name: &str, kind: u8) -> Self {
        self.entry(name.as_bytes(), kind, 0o644, b"", b"")
    }

    /// A GNU long-name entry for the next entry.
    fn long_name(self, name: &[u8]) -> Self {
        let mut data = name.to_vec();
        data.push(0);
        let header = Self::header(b"././@LongLink", b'L', 0o644, b"", data.len() as u64);
        self.push(&header, &data)
    }

    /// A pax extended header with `records` for the next entry.
    fn pax(self, records: &[(&str, &str)]) -> Self {
        let mut data = Vec::new();
        for (key, value) in records {
            let body = format!(" {key}={value}\n");
            // The length prefix counts itself.
            let mut len = body.len() + 1;
            while format!("{len}{body}").len() != len {
                len += 1;
            }
            data.extend_from_slice(format!("{len}{body}").as_bytes());
        }
        let header = Self::header(b"./PaxHeaders/x", b'x', 0o644, b"", data.len() as u64);
        self.push(&header, &data)
    }

    fn tar(mut self) -> Vec<u8> {
        self.bytes.extend(std::iter::repeat_n(0u8, 1024));
        self.bytes
    }

    fn slug(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// A temporary directory holding the unpack target `app/` and a bystander file outside it.
struct Sandbox {
    dir: tempfile::TempDir,
}

const VICTIM_CONTENT: &[u8] = b"untouched\n";

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/victim"), VICTIM_CONTENT).unwrap();
        Sandbox { dir }
    }

    fn app(&self) -> PathBuf {
        self.dir.path().join("app")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Everything in the sandbox that is not below `app/`.
    fn outside_entries(&self) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        walk(self.dir.path(), &mut |path| {
            let relative = path.strip_prefix(self.dir.path()).unwrap();
            if !relative.starts_with("app") {
                found.insert(relative.display().to_string());
            }
        });
        found
    }

    #[track_caller]
    fn assert_nothing_outside(&self, case: &str) {
        let expected: BTreeSet<String> = ["outside", "outside/victim"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            self.outside_entries(),
            expected,
            "{case}: something was written outside app/"
        );
        let victim = std::fs::symlink_metadata(self.outside().join("victim")).unwrap();
        assert!(victim.is_file(), "{case}: victim replaced");
        assert_eq!(victim.nlink(), 1, "{case}: victim hard-linked");
        assert_eq!(
            std::fs::read(self.outside().join("victim")).unwrap(),
            VICTIM_CONTENT,
            "{case}: victim changed"
        );
    }

    /// Every symlink unpacked into app/ that resolves must resolve inside it (or under
    /// `/app`, where the app runs); no special files.
    #[track_caller]
    fn assert_app_is_contained(&self, case: &str) {
        let app = self.app();
        if !app.exists() {
            return;
        }
        let root = std::fs::canonicalize(&app).unwrap();
        walk(&app, &mut |path| {
            let meta = std::fs::symlink_metadata(path).unwrap();
            let kind = meta.file_type();
            assert!(
                kind.is_file() || kind.is_dir() || kind.is_symlink(),
                "{case}: special file {path:?}"
            );
            if kind.is_symlink() {
                if let Ok(resolved) = std::fs::canonicalize(path) {
                    assert!(
                        resolved.starts_with(&root) || resolved.starts_with("/app"),
                        "{case}: {path:?} resolves to {resolved:?}"
                    );
                }
            }
        });
    }
}

use std::os::unix::fs::MetadataExt;

fn walk(dir: &Path, visit: &mut dyn FnMut(&Path)) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        visit(&path);
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            walk(&path, visit);
        }
    }
}

fn unpack(slug: &[u8], sandbox: &Sandbox) -> Result<slug::UnpackSummary, UnpackError> {
    slug::unpack_slug(slug, &sandbox.app(), &UnpackOptions::default())
}

// ------------------------------------------------------------------ library tests

#[test]
fn malicious_slugs_are_refused_with_nothing_written_outside_the_app() {
    type Check = fn(&UnpackError) -> bool;
    let sandbox_outside = |sandbox: &Sandbox| sandbox.outside().display().to_string();
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Box<dyn Fn(&Sandbox) -> Vec<u8>>, Check)> = vec![
        (
            "parent traversal",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .file("../outside/pwned", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "traversal hidden inside the path",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .dir("./lib/")
                    .file("./lib/../../outside/pwned", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "traversal in the ./app/ layout",
            Box::new(|_| {
                RawTar::default()
                    .dir("./app/")
                    .file("./app/../pwned", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "absolute path",
            Box::new(move |s| {
                let target = format!("{}/pwned", sandbox_outside(s));
                RawTar::default().file(&target, b"x").slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "traversal through a GNU long name",
            Box::new(|_| {
                let name = format!("./{}/../../../outside/pwned", "d/".repeat(60));
                RawTar::default().dir("./").file(&name, b"x").slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "traversal through a pax path",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .pax(&[("path", "../outside/pwned")])
                    .file("./harmless", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "relative symlink escape, then a file through it",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .symlink("./link", "../outside")
                    .file("./link/pwned", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::SymlinkEscape { .. }),
        ),
        (
            "absolute symlink escape, then a file through it",
            Box::new(move |s| {
                RawTar::default()
                    .dir("./")
                    .symlink("./link", &sandbox_outside(s))
                    .file("./link/pwned", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::SymlinkEscape { .. }),
        ),
        (
            "symlink chain escaping through '..' after a link",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .dir("./sub/")
                    .symlink("./sub/up", "..")
                    .symlink("./escape", "sub/up/../outside")
                    .slug()
            }),
            |e| matches!(e, UnpackError::SymlinkEscape { .. }),
        ),
        (
            "file written through an inside symlink",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .dir("./sub/")
                    .symlink("./alias", "sub")
                    .file("./alias/through", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "hard link escape",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .hardlink("./hl", "../outside/victim")
                    .slug()
            }),
            |e| matches!(e, UnpackError::BadHardLink { .. }),
        ),
        (
            "hard link to an absolute path",
            Box::new(move |s| {
                let victim = format!("{}/victim", sandbox_outside(s));
                RawTar::default().dir("./").hardlink("./hl", &victim).slug()
            }),
            |e| matches!(e, UnpackError::BadHardLink { .. }),
        ),
        (
            "hard link through an inside symlink",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .dir("./sub/")
                    .file("./sub/f", b"x")
                    .symlink("./alias", "sub")
                    .hardlink("./hl", "./alias/f")
                    .slug()
            }),
            |e| matches!(e, UnpackError::BadHardLink { .. }),
        ),
        (
            "character device",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .special("./null", ENTRY_CHAR)
                    .slug()
            }),
            |e| matches!(e, UnpackError::ForbiddenType { .. }),
        ),
        (
            "block device",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .special("./sda", ENTRY_BLOCK)
                    .slug()
            }),
            |e| matches!(e, UnpackError::ForbiddenType { .. }),
        ),
        (
            "fifo",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .special("./pipe", ENTRY_FIFO)
                    .slug()
            }),
            |e| matches!(e, UnpackError::ForbiddenType { .. }),
        ),
        (
            "huge size header",
            Box::new(|_| {
                let header = RawTar::header(b"./huge", ENTRY_FILE, 0o644, b"", 1 << 50);
                RawTar::default().dir("./").push(&header, b"tiny").slug()
            }),
            |e| matches!(e, UnpackError::TooLarge { .. }),
        ),
        (
            "huge GNU long-name header",
            Box::new(|_| {
                let header = RawTar::header(b"././@LongLink", b'L', 0o644, b"", 1 << 40);
                RawTar::default()
                    .dir("./")
                    .push(&header, &vec![b'a'; 3 * 1024 * 1024])
                    .slug()
            }),
            |e| matches!(e, UnpackError::HeadersTooLarge { .. }),
        ),
        (
            "directory header claiming data",
            Box::new(|_| {
                let header = RawTar::header(b"./dir/", ENTRY_DIR, 0o755, b"", 1 << 33);
                RawTar::default().dir("./").push(&header, b"").slug()
            }),
            |e| matches!(e, UnpackError::Corrupt(_)),
        ),
        (
            "bad header checksum",
            Box::new(|_| {
                let mut tar = RawTar::default().dir("./").file("./f", b"data").tar();
                tar[512] ^= 0x20; // second header's name
                gzip(&tar)
            }),
            |e| matches!(e, UnpackError::Corrupt(_)),
        ),
        (
            "truncated slug",
            Box::new(|_| {
                let slug = RawTar::default()
                    .dir("./")
                    .file("./f", &vec![7u8; 100_000])
                    .slug();
                slug[..slug.len() / 2].to_vec()
            }),
            |e| matches!(e, UnpackError::Corrupt(_)),
        ),
        (
            "not gzip at all",
            Box::new(|_| b"PK\x03\x04 this is a zip file, not a slug".to_vec()),
            |e| matches!(e, UnpackError::Corrupt(_)),
        ),
        (
            "mixed ./app/ and ./ layouts",
            Box::new(|_| {
                RawTar::default()
                    .dir("./app/")
                    .file("./app/Procfile", b"web: x\n")
                    .file("./evil", b"x")
                    .slug()
            }),
            |e| matches!(e, UnpackError::MixedLayout { .. }),
        ),
        (
            "symlink replacing a directory",
            Box::new(|_| {
                RawTar::default()
                    .dir("./")
                    .dir("./lib/")
                    .symlink("./lib", "sub")
                    .slug()
            }),
            |e| matches!(e, UnpackError::UnsafePath { .. }),
        ),
        (
            "empty archive",
            Box::new(|_| RawTar::default().slug()),
            |e| matches!(e, UnpackError::Empty),
        ),
    ];
    assert!(cases.len() >= 10);
    for (case, make, check) in &cases {
        let sandbox = Sandbox::new();
        let slug = make(&sandbox);
        match unpack(&slug, &sandbox) {
            Ok(summary) => panic!("{case}: accepted ({summary:?})"),
            Err(error) => {
                assert!(check(&error), "{case}: unexpected error {error:?}");
                // Errors are shown to operators as is: they must say what is wrong.
                assert!(error.to_string().len() > 20, "{case}: terse error {error}");
            }
        }
        sandbox.assert_nothing_outside(case);
        sandbox.assert_app_is_contained(case);
    }
}

#[test]
fn safe_slugs_unpack_in_both_layouts() {
    for (layout, prefix) in [(SlugLayout::Root, "./"), (SlugLayout::AppDir, "./app/")] {
        let name = |path: &str| format!("{prefix}{path}");
        let long = format!("{}deep.txt", "long-directory-name/".repeat(8));
        let mut tar = RawTar::default()
            .dir(&name(""))
            .file(&name("Procfile"), b"web: ./run\n")
            .dir(&name("bin/"))
            .entry(
                name("bin/run").as_bytes(),
                ENTRY_FILE,
                0o4755,
                b"",
                b"#!/bin/sh\n",
            )
            .symlink(&name("run"), "bin/run")
            .symlink(&name("python"), "/app/.heroku/python/bin/python")
            .dir(&name("lib/"))
            .symlink(&name("lib/up"), "../bin/run")
            .hardlink(&name("bin/run-again"), &name("bin/run"))
            .dir(&name("ro/"));
        // A read-only directory with a file inside: modes are applied at the end.
        tar = tar
            .entry(name("ro/").as_bytes(), ENTRY_DIR, 0o555, b"", b"")
            .file(&name("ro/inner"), b"inner")
            .file(&name(&long), b"deep");
        let sandbox = Sandbox::new();
        let summary = unpack(&tar.slug(), &sandbox).unwrap();
        assert_eq!(summary.layout, layout);
        let app = sandbox.app();
        assert_eq!(
            std::fs::read(app.join("Procfile")).unwrap(),
            b"web: ./run\n"
        );
        assert_eq!(std::fs::read(app.join("run")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::read(app.join("lib/up")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::read(app.join(&long)).unwrap(), b"deep");
        assert_eq!(std::fs::read(app.join("ro/inner")).unwrap(), b"inner");
        let run = std::fs::metadata(app.join("bin/run")).unwrap();
        assert_eq!(run.mode() & 0o7777, 0o755, "setuid must be dropped");
        assert_eq!(run.nlink(), 2, "hard link kept");
        assert_eq!(
            std::fs::read_link(app.join("python")).unwrap(),
            Path::new("/app/.heroku/python/bin/python")
        );
        assert!(!app.join("app").exists());
        sandbox.assert_nothing_outside(&format!("{layout:?}"));
    }
}

#[test]
fn a_packed_slug_round_trips() {
    // The packer's output (what the pipeline stores) is what the runner must accept.
    let input = RawTar::default()
        .dir("app/")
        .file("app/Procfile", b"web: python3 app.py\n")
        .file("app/app.py", b"print('hi')\n")
        .dir("app/.profile.d/")
        .file("app/.profile.d/python.sh", b"export X=1\n")
        .symlink("app/current", "app.py")
        .tar();
    let mut packed = Vec::new();
    let ignore = SlugIgnore::empty();
    let options = PackOptions {
        strip_prefix: "app",
        ignore: &ignore,
    };
    slug::pack(&input[..], &mut packed, &options).unwrap();
    let sandbox = Sandbox::new();
    let summary = unpack(&packed, &sandbox).unwrap();
    assert_eq!(summary.layout, SlugLayout::Root);
    assert_eq!(
        std::fs::read(sandbox.app().join(".profile.d/python.sh")).unwrap(),
        b"export X=1\n"
    );
    assert_eq!(
        std::fs::read(sandbox.app().join("current")).unwrap(),
        b"print('hi')\n"
    );
}

/// A bounded, coverage-free mutation fuzzer for the unpacker (cargo-fuzz needs a nightly
/// toolchain and libFuzzer; this runs on stable in every `cargo test`). Valid archives are
/// mutated (bytes, header fields, truncation, block duplication), header checksums are
/// usually fixed up so mutations get past the checksum check, and each result is unpacked:
/// it must never panic, never write outside the target, never leave special files or
/// escaping symlinks. `SLUG_FUZZ_ITERATIONS` (default 2000) and `SLUG_FUZZ_SEED` tune it.
#[test]
fn unpacker_survives_mutated_slugs() {
    let iterations: u64 = std::env::var("SLUG_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seed: u64 = std::env::var("SLUG_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5105_7ab1e);
    let seeds = [
        RawTar::default()
            .dir("./")
            .file("./Procfile", b"web: ./run\n")
            .dir("./bin/")
            .file("./bin/run", b"#!/bin/sh\necho hi\n")
            .symlink("./run", "bin/run")
            .hardlink("./again", "./bin/run")
            .tar(),
        RawTar::default()
            .dir("./app/")
            .file("./app/a", b"a")
            .symlink("./app/abs", "/app/a")
            .tar(),
        RawTar::default()
            .dir("./")
            .pax(&[("path", "./pax-named"), ("size", "3")])
            .file("./x", b"abc")
            .file(&format!("./{}", "n".repeat(150)), b"long")
            .tar(),
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcomes = [0u64; 2];
    for iteration in 0..iterations {
        let mut data = seeds[rng.gen_range(0..seeds.len())].clone();
        for _ in 0..rng.gen_range(1..=4) {
            mutate(&mut data, &mut rng);
        }
        if rng.gen_bool(0.8) {
            fix_checksums(&mut data);
        }
        let sandbox = Sandbox::new();
        let result = slug::unpack_tar(&data[..], &sandbox.app(), &UnpackOptions::default());
        outcomes[usize::from(result.is_ok())] += 1;
        let case = format!("fuzz iteration {iteration} (seed {seed})");
        sandbox.assert_nothing_outside(&case);
        sandbox.assert_app_is_contained(&case);
    }
    println!(
        "fuzzed {iterations} mutated archives: {} refused, {} unpacked",
        outcomes[0], outcomes[1]
    );
}

fn mutate(data: &mut Vec<u8>, rng: &mut StdRng) {
    const INTERESTING: &[&[u8]] = &[
        b"../",
        b"/",
        b"..",
        b"./app/",
        b"/etc/passwd",
        b"\0",
        b"77777777777",
        b"0",
        b"3",
        b"4",
        b"6",
        b"1",
        b"2",
        b"L",
        b"x",
        b"g",
        b"S",
    ];
    if data.is_empty() {
        return;
    }
    match rng.gen_range(0..6) {
        0 => {
            let at = rng.gen_range(0..data.len());
            data[at] = rng.gen();
        }
        1 => {
            // Overwrite a header field: name (0), mode (100), size (124), type (156), link (157).
            let blocks = data.len() / 512;
            let block = rng.gen_range(0..blocks.max(1));
            let field = [0usize, 100, 124, 156, 157][rng.gen_range(0..5)];
            let value = INTERESTING[rng.gen_range(0..INTERESTING.len())];
            let at = block * 512 + field;
            for (offset, byte) in value.iter().enumerate() {
                if let Some(slot) = data.get_mut(at + offset) {
                    *slot = *byte;
                }
            }
        }
        2 => {
            let len = rng.gen_range(0..data.len());
            data.truncate(len);
        }
        3 => {
            let blocks = data.len() / 512;
            if blocks > 0 {
                let block = rng.gen_range(0..blocks);
                let copy = data[block * 512..(block + 1) * 512].to_vec();
                let at = rng.gen_range(0..=blocks) * 512;
                data.splice(at..at, copy);
            }
        }
        4 => {
            // A base-256 size, which GNU tar uses for huge files.
            let blocks = data.len() / 512;
            let block = rng.gen_range(0..blocks.max(1));
            let at = block * 512 + 124;
            if at + 12 <= data.len() {
                data[at] = 0x80;
                for byte in &mut data[at + 1..at + 12] {
                    *byte = rng.gen();
                }
            }
        }
        _ => {
            let at = rng.gen_range(0..data.len());
            let bit = 1u8 << rng.gen_range(0..8);
            data[at] ^= bit;
        }
    }
}

/// Recomputes the checksum of every block that looks like a tar header.
fn fix_checksums(data: &mut [u8]) {
    for block in data.chunks_exact_mut(512) {
        if block[257..262] != *b"ustar" {
            continue;
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|byte| u32::from(*byte)).sum();
        let field = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
    }
}

// ------------------------------------------------------------------ container tests

/// A slug whose `web` process proves the profile scripts ran, then waits for SIGTERM.
fn signal_app_slug() -> Vec<u8> {
    RawTar::default()
        .dir("./")
        .file(
            "./Procfile",
            b"web: trap 'echo \"got SIGTERM\"; exit 0' TERM; echo \"ready $GREETING home=$HOME port=$PORT\"; while true; do sleep 0.2; done\nonce: echo \"once ran\"\n",
        )
        .dir("./.profile.d/")
        .file("./.profile.d/greeting.sh", b"export GREETING=from-profile\n")
        .file("./.profile", b"export GREETING=\"$GREETING+dotprofile\"\n")
        .slug()
}

/// A slug whose only effect, if it ever ran, is visible in the output and the file system.
fn marker_slug() -> Vec<u8> {
    RawTar::default()
        .dir("./")
        .file(
            "./Procfile",
            b"web: echo APP STARTED; touch /tmp/app-started\n",
        )
        .slug()
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn pipeline_slug_in_s3_serves_http_and_runs_other_process_types() {
    require_services!();
    let image = runner_image();
    let bucket = unique("runner");
    let (builder, key) = Builder::with_developer_and(BuilderOptions {
        storage: Storage::S3 {
            bucket: bucket.clone(),
        },
        ..Default::default()
    });
    let app = App::from_fixture("python-web");
    let name = unique("run");
    app.push(&builder, &name, &key).assert_ok();
    let slug_key = format!("home/{name}:git-{}/push/slug.tgz", &app.head()[..8]);
    let scratch = tempfile::tempdir().unwrap();
    let s3 = S3::connect();
    let slug_sha = sha256_file(&s3.download(&bucket, &slug_key, scratch.path()));

    let port = free_port();
    let s3_env = runner_s3_env();
    let mut web_args: Vec<String> = s3_env.clone();
    web_args.extend([
        "-e".into(),
        format!("SLUG_URL=s3://{bucket}/{slug_key}"),
        "-e".into(),
        format!("SLUG_SHA256={slug_sha}"),
        "-e".into(),
        format!("PORT={port}"),
        "--network".into(),
        "host".into(),
        image.clone(),
        "start".into(),
        "web".into(),
    ]);
    let web = RunnerContainer::start(&web_args);
    let answered = eventually(Duration::from_secs(60), || {
        http_get(port, "/")
            .is_some_and(|(status, body)| status == 200 && body.contains("Hello from python-web"))
    });
    assert!(answered, "no answer on port {port}:\n{}", web.logs());
    assert!(web.logs().contains("checksum verified"), "{}", web.logs());
    drop(web);

    // The bare key plus SLUG_BUCKET, and the second process type.
    let mut worker_args = s3_env.clone();
    worker_args.extend([
        "-e".into(),
        format!("SLUG_URL={slug_key}"),
        "-e".into(),
        format!("SLUG_BUCKET={bucket}"),
        "--network".into(),
        "host".into(),
        image.clone(),
        "start".into(),
        "worker".into(),
    ]);
    let worker = run_runner(&worker_args, None);
    worker.assert_exit(0);
    assert!(worker.stdout.contains("worker ran"), "{worker:?}");

    // A word that is neither a type nor a command lists the known types.
    let mut unknown_args = s3_env;
    unknown_args.extend([
        "-e".into(),
        format!("SLUG_URL=s3://{bucket}/{slug_key}"),
        "--network".into(),
        "host".into(),
        image,
        "start".into(),
        "clock".into(),
    ]);
    let unknown = run_runner(&unknown_args, None);
    unknown.assert_failed();
    assert!(
        unknown
            .stderr
            .contains("\"clock\" is neither a process type (known types: web, worker)"),
        "{unknown:?}"
    );
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn docker_stop_delivers_sigterm_to_the_app() {
    require_services!();
    // Served over plain HTTP from this test, like a presigned URL would be.
    let server = OneFileServer::start(signal_app_slug());
    let web = RunnerContainer::start(&[
        "-e".into(),
        format!("SLUG_URL={}", server.url("/slug.tgz")),
        "--network".into(),
        "host".into(),
        runner_image(),
        "start".into(),
        "web".into(),
    ]);
    let ready = eventually(Duration::from_secs(30), || {
        web.logs()
            .contains("ready from-profile+dotprofile home=/app port=5000")
    });
    assert!(ready, "app never got ready:\n{}", web.logs());
    // The app is PID 1: no runner or shell lingers in between.
    let top = docker(&["top", &web.id, "-o", "pid,args"]);
    assert!(!top.contains("slugrunner"), "runner lingers:\n{top}");

    docker(&["stop", "--time", "30", &web.id]);
    let state = docker(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}} {{.State.OOMKilled}}",
        &web.id,
    ]);
    // 0 is the trap's `exit 0`; a SIGKILL at the end of the grace period would give 137.
    assert_eq!(state.trim(), "0 false", "logs:\n{}", web.logs());
    assert!(web.logs().contains("got SIGTERM"), "{}", web.logs());
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn wrong_sha256_is_refused_before_anything_runs() {
    require_services!();
    let slug = marker_slug();
    let wrong = sha256_hex(b"something else");
    let run = run_runner_kept(
        &[
            "-i".into(),
            "-e".into(),
            "SLUG_URL=-".into(),
            "-e".into(),
            format!("SLUG_SHA256={wrong}"),
            runner_image(),
            "start".into(),
            "web".into(),
        ],
        Some(&slug),
    );
    run.output.assert_failed();
    assert!(
        run.output.stderr.contains(&format!(
            "checksum mismatch: SLUG_SHA256 is {wrong} but the slug's SHA-256 is {}",
            sha256_hex(&slug)
        )),
        "{:?}",
        run.output
    );
    assert!(
        !run.output.stdout.contains("APP STARTED"),
        "{:?}",
        run.output
    );
    // Nothing was unpacked, nothing ran.
    assert!(
        !run.changes
            .iter()
            .any(|change| change.contains(" /app/") || change.contains("app-started")),
        "container changed: {:?}",
        run.changes
    );

    // The right checksum runs it.
    let right = run_runner(
        &[
            "-i".into(),
            "-e".into(),
            "SLUG_URL=-".into(),
            "-e".into(),
            format!("SLUG_SHA256={}", sha256_hex(&slug)),
            runner_image(),
            "start".into(),
            "web".into(),
        ],
        Some(&slug),
    );
    right.assert_exit(0);
    assert!(right.stdout.contains("APP STARTED"), "{right:?}");
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn malicious_slugs_are_refused_by_the_runner_even_as_root() {
    require_services!();
    let evil = [
        (
            "traversal",
            RawTar::default()
                .dir("./")
                .file("./Procfile", b"web: echo APP STARTED\n")
                .file("../etc/pwned", b"x")
                .slug(),
        ),
        (
            "absolute",
            RawTar::default()
                .dir("./")
                .file("./Procfile", b"web: echo APP STARTED\n")
                .file("/etc/pwned", b"x")
                .slug(),
        ),
        (
            "symlink escape",
            RawTar::default()
                .dir("./")
                .file("./Procfile", b"web: echo APP STARTED\n")
                .symlink("./etc", "/etc")
                .file("./etc/pwned", b"x")
                .slug(),
        ),
        (
            "hard link escape",
            RawTar::default()
                .dir("./")
                .hardlink("./shadow", "../etc/shadow")
                .slug(),
        ),
        (
            "device",
            RawTar::default()
                .dir("./")
                .special("./mem", ENTRY_CHAR)
                .slug(),
        ),
    ];
    for (case, slug) in evil {
        // As root, so file permissions cannot be what stops a write outside /app.
        let run = run_runner_kept(
            &[
                "-i".into(),
                "--user".into(),
                "0".into(),
                "-e".into(),
                "SLUG_URL=-".into(),
                runner_image(),
                "start".into(),
                "web".into(),
            ],
            Some(&slug),
        );
        run.output.assert_failed();
        assert!(
            run.output.stderr.contains("cannot unpack the slug"),
            "{case}: {:?}",
            run.output
        );
        assert!(!run.output.stdout.contains("APP STARTED"), "{case}");
        for change in &run.changes {
            let path = change.split_whitespace().nth(1).unwrap_or_default();
            assert!(
                path == "/app" || path.starts_with("/app/"),
                "{case}: changed outside /app: {change}"
            );
        }
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn every_slug_source_and_clear_errors() {
    require_services!();
    let image = runner_image();
    let slug = signal_app_slug();

    // A local path (a mounted file), running a command line with shell syntax.
    let dir = tempfile::tempdir().unwrap();
    let slug_path = dir.path().join("slug.tgz");
    std::fs::write(&slug_path, &slug).unwrap();
    let local = run_runner(
        &[
            "-v".into(),
            format!("{}:/slugs/slug.tgz:ro", slug_path.display()),
            "-e".into(),
            "SLUG_URL=/slugs/slug.tgz".into(),
            "-e".into(),
            "PORT=8123".into(),
            image.clone(),
            "start".into(),
            "echo \"$GREETING $PORT\" && pwd".into(),
        ],
        None,
    );
    local.assert_exit(0);
    assert!(
        local.stdout.contains("from-profile+dotprofile 8123\n/app"),
        "{local:?}"
    );

    // Several arguments are a program and its exact arguments.
    let argv = run_runner(
        &[
            "-i".into(),
            "-e".into(),
            "SLUG_URL=-".into(),
            image.clone(),
            "start".into(),
            "printf".into(),
            "<%s>".into(),
            "a b".into(),
            "$HOME".into(),
        ],
        Some(&slug),
    );
    argv.assert_exit(0);
    assert_eq!(argv.stdout, "<a b><$HOME>", "{argv:?}");

    // Heroku's ./app/ layout with only a .release: default_process_types are used.
    let heroku = RawTar::default()
        .dir("./app/")
        .file(
            "./app/.release",
            b"---\naddons: []\ndefault_process_types:\n  web: echo \"default web ran\"\n",
        )
        .slug();
    let release = run_runner(
        &[
            "-i".into(),
            "-e".into(),
            "SLUG_URL=-".into(),
            image.clone(),
            "start".into(),
            "web".into(),
        ],
        Some(&heroku),
    );
    release.assert_exit(0);
    assert!(release.stdout.contains("default web ran"), "{release:?}");

    // An already populated /app is run as is.
    let populated = tempfile::tempdir().unwrap();
    // The runner runs as uid 1000: the mounted directory must be readable by it.
    std::fs::set_permissions(
        populated.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::write(
        populated.path().join("Procfile"),
        "web: echo \"populated ran in $PWD\"\n",
    )
    .unwrap();
    let ready = run_runner(
        &[
            "-v".into(),
            format!("{}:/app:ro", populated.path().display()),
            image.clone(),
            "start".into(),
            "web".into(),
        ],
        None,
    );
    ready.assert_exit(0);
    assert!(ready.stdout.contains("populated ran in /app"), "{ready:?}");

    // Clear errors.
    let server = OneFileServer::start(slug.clone());
    let corrupt = slug[..slug.len() / 2].to_vec();
    let no_metadata = RawTar::default().dir("./").file("./app.py", b"").slug();
    type ErrorCase<'a> = (Vec<String>, Option<&'a [u8]>, String);
    let cases: Vec<ErrorCase> = vec![
        (
            vec![image.clone(), "start".into(), "web".into()],
            None,
            "no slug to run: set SLUG_URL".to_owned(),
        ),
        (
            vec![
                "--network".into(),
                "host".into(),
                "-e".into(),
                format!("SLUG_URL={}", server.url("/missing.tgz")),
                image.clone(),
                "start".into(),
                "web".into(),
            ],
            None,
            format!("the slug {} does not exist", server.url("/missing.tgz")),
        ),
        (
            vec![
                "--network".into(),
                "host".into(),
                "-e".into(),
                format!("SLUG_URL=http://127.0.0.1:{}/slug.tgz", free_port()),
                image.clone(),
                "start".into(),
                "web".into(),
            ],
            None,
            "downloading the slug from http://127.0.0.1:".to_owned(),
        ),
        (
            vec![
                "-i".into(),
                "-e".into(),
                "SLUG_URL=-".into(),
                image.clone(),
                "start".into(),
                "web".into(),
            ],
            Some(&corrupt),
            "cannot unpack the slug: the slug is corrupt".to_owned(),
        ),
        (
            vec![
                "-e".into(),
                "SLUG_URL=https://example.invalid/slug.tgz".into(),
                image.clone(),
                "start".into(),
                "web".into(),
            ],
            None,
            "https:// is not supported".to_owned(),
        ),
        (
            vec![
                "-e".into(),
                "SLUG_URL=home/app/push/slug.tgz".into(),
                image.clone(),
                "start".into(),
                "web".into(),
            ],
            None,
            "SLUG_BUCKET".to_owned(),
        ),
        (
            vec![
                "-i".into(),
                "-e".into(),
                "SLUG_URL=-".into(),
                image.clone(),
                "start".into(),
                "nope".into(),
            ],
            Some(&slug),
            "\"nope\" is neither a process type (known types: once, web) nor a command".to_owned(),
        ),
        (
            vec![
                "-i".into(),
                "-e".into(),
                "SLUG_URL=-".into(),
                image.clone(),
                "start".into(),
                "web".into(),
            ],
            Some(&no_metadata),
            "\"web\" is neither a process type (no Procfile and no .release in /app)".to_owned(),
        ),
    ];
    for (args, stdin, expected) in cases {
        let run = run_runner(&args, stdin);
        run.assert_failed();
        assert!(
            run.stderr.contains(&expected),
            "expected {expected:?} for {args:?}: {run:?}"
        );
    }
}

#[test]
#[ignore = "integration test: needs Docker, S3 and a registry; scripts/test.sh runs it"]
fn start_one_word_runs_a_declared_type_else_a_command() {
    require_services!();
    let image = runner_image();
    let run_word = |slug: &[u8], word: &str| {
        run_runner(
            &[
                "-i".into(),
                "-e".into(),
                "SLUG_URL=-".into(),
                image.clone(),
                "start".into(),
                word.into(),
            ],
            Some(slug),
        )
    };

    // No `pwd` type: the word is run as a program, after the profile scripts.
    let pwd = run_word(&signal_app_slug(), "pwd");
    pwd.assert_exit(0);
    assert_eq!(pwd.stdout, "/app\n", "{pwd:?}");

    // A declared type wins over a program of the same name.
    let shadowing = RawTar::default()
        .dir("./")
        .file("./Procfile", b"pwd: echo \"pwd is a process type here\"\n")
        .slug();
    let shadowed = run_word(&shadowing, "pwd");
    shadowed.assert_exit(0);
    assert_eq!(
        shadowed.stdout, "pwd is a process type here\n",
        "{shadowed:?}"
    );

    // Without a Procfile or .release every word is a command.
    let bare = RawTar::default().dir("./").file("./app.py", b"").slug();
    let listing = run_word(&bare, "ls");
    listing.assert_exit(0);
    assert_eq!(listing.stdout, "app.py\n", "{listing:?}");

    // Neither: bash's status for a missing command, and the known types.
    let neither = run_word(&signal_app_slug(), "wbe");
    neither.assert_exit(127);
    assert!(
        neither.stderr.contains(
            "slugrunner: error: \"wbe\" is neither a process type (known types: once, web) \
             nor a command that could be run"
        ),
        "{neither:?}"
    );
}

fn runner_s3_env() -> Vec<String> {
    let mut env = Vec::new();
    for (name, value) in [
        ("AWS_ENDPOINT_URL", s3_endpoint()),
        (
            "AWS_ACCESS_KEY_ID",
            std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into()),
        ),
        (
            "AWS_SECRET_ACCESS_KEY",
            std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into()),
        ),
        ("AWS_REGION", "us-east-1".into()),
    ] {
        env.push("-e".into());
        env.push(format!("{name}={value}"));
    }
    env
}
