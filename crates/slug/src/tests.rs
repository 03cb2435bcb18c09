//! Tests for `pack` and no-panic fuzzing of every parser in the module.

use std::io::{self, Read, Write};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::*;

/// Input-side tar builder that writes names verbatim (the `tar` crate refuses `..`).
struct InputTar {
    builder: tar::Builder<Vec<u8>>,
}

impl InputTar {
    fn new() -> Self {
        InputTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(
        &mut self,
        name: &str,
        entry_type: EntryType,
        mode: u32,
        link: Option<&str>,
        data: &[u8],
    ) -> &mut Self {
        let mut header = Header::new_gnu();
        header.set_entry_type(entry_type);
        header.set_mode(mode);
        header.set_uid(1000);
        header.set_gid(1000);
        header.set_username("builder").unwrap();
        header.set_groupname("builder").unwrap();
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        if name.len() <= 100 {
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(link) = link {
                if link.len() <= 100 {
                    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
                    header.set_cksum();
                    self.builder.append(&header, data).unwrap();
                } else {
                    self.builder.append_link(&mut header, name, link).unwrap();
                }
            } else {
                header.set_cksum();
                self.builder.append(&header, data).unwrap();
            }
        } else {
            match link {
                Some(link) => self.builder.append_link(&mut header, name, link).unwrap(),
                None => self.builder.append_data(&mut header, name, data).unwrap(),
            }
        }
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, EntryType::Directory, 0o755, None, b"")
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(name, EntryType::Regular, mode, None, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Symlink, 0o777, Some(target), b"")
    }

    fn hard_link(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, EntryType::Link, 0o644, Some(target), b"")
    }

    fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

#[derive(Debug, PartialEq)]
struct OutEntry {
    name: String,
    kind: u8,
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
}

fn read_slug(slug: &[u8]) -> Vec<OutEntry> {
    let mut archive = tar::Archive::new(GzDecoder::new(slug));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header();
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        assert_eq!(header.mtime().unwrap(), SLUG_MTIME);
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.groupname_bytes(), Some(&b""[..]));
        let name = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let kind = header.entry_type().as_byte();
        let mode = header.mode().unwrap();
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8(l.into_owned()).unwrap());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.push(OutEntry {
            name,
            kind,
            mode,
            link,
            data,
        });
    }
    out
}

fn pack_bytes(
    input: &[u8],
    prefix: &str,
    ignore: &SlugIgnore,
) -> Result<(PackedSlug, Vec<u8>), SlugError> {
    let mut output = Vec::new();
    let packed = pack(
        input,
        &mut output,
        &PackOptions {
            strip_prefix: prefix,
            ignore,
        },
    )?;
    Ok((packed, output))
}

const LONG_DIR: &str =
    "a-directory-name-that-is-quite-long/another-directory-name-that-is-also-long";

fn sample_app() -> Vec<u8> {
    let long_file = format!("app/{LONG_DIR}/and-a-file-name-long-enough-to-need-gnu-longname.txt");
    let long_target = format!("{LONG_DIR}/and-a-file-name-long-enough-to-need-gnu-longname.txt");
    let mut tar = InputTar::new();
    tar.dir("app/")
        .dir("app/.git/")
        .file("app/.git/HEAD", 0o644, b"ref: refs/heads/master\n")
        .file(
            "app/.release",
            0o644,
            b"---\ndefault_process_types:\n  web: python app.py\n",
        )
        .file("app/.slugignore", 0o644, b"*.log\n/tmp\n")
        .file("app/Procfile", 0o644, b"web: gunicorn app:app\n")
        .dir(&format!("app/{}/", LONG_DIR.split('/').next().unwrap()))
        .dir(&format!("app/{LONG_DIR}/"))
        .file(&long_file, 0o600, b"long")
        .file("app/app.py", 0o644, b"print('hi')\n")
        .dir("app/bin/")
        .file("app/bin/run", 0o4755, b"#!/bin/sh\nexec python app.py\n")
        .file("app/debug.log", 0o644, b"noise")
        .raw("app/dev-null", EntryType::Char, 0o666, None, b"")
        .raw("app/fifo", EntryType::Fifo, 0o644, None, b"")
        .hard_link("app/hardlink.py", "app/app.py")
        .symlink("app/latest", "bin/run")
        .symlink("app/long-link", &long_target)
        .dir("app/lib/")
        .dir("app/lib/vendor/")
        .file(
            "app/lib/vendor/.git",
            0o644,
            b"gitdir: ../../.git/modules/vendor\n",
        )
        .file("app/lib/vendor/x.log", 0o644, b"noise")
        .file("app/lib/vendor/x.py", 0o755, b"x = 1\n")
        .dir("app/tmp/")
        .file("app/tmp/cache.bin", 0o644, b"cache");
    tar.bytes()
}

#[test]
fn pack_sample_app() {
    let ignore = SlugIgnore::parse("*.log\n/tmp\n");
    let (packed, slug) = pack_bytes(&sample_app(), "app", &ignore).unwrap();
    let entries = read_slug(&slug);
    let summary: Vec<(&str, u8, u32, Option<&str>)> = entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind, e.mode, e.link.as_deref()))
        .collect();
    let long_dir_1 = format!("./{}/", LONG_DIR.split('/').next().unwrap());
    let long_dir_2 = format!("./{LONG_DIR}/");
    let long_file = format!("./{LONG_DIR}/and-a-file-name-long-enough-to-need-gnu-longname.txt");
    let long_target = format!("{LONG_DIR}/and-a-file-name-long-enough-to-need-gnu-longname.txt");
    assert_eq!(
        summary,
        vec![
            ("./", b'5', 0o755, None),
            ("./.release", b'0', 0o644, None),
            ("./Procfile", b'0', 0o644, None),
            (long_dir_1.as_str(), b'5', 0o755, None),
            (long_dir_2.as_str(), b'5', 0o755, None),
            (long_file.as_str(), b'0', 0o600, None),
            ("./app.py", b'0', 0o644, None),
            ("./bin/", b'5', 0o755, None),
            ("./bin/run", b'0', 0o755, None),
            ("./hardlink.py", b'1', 0o644, Some("./app.py")),
            ("./latest", b'2', 0o777, Some("bin/run")),
            ("./long-link", b'2', 0o777, Some(long_target.as_str())),
            ("./lib/", b'5', 0o755, None),
            ("./lib/vendor/", b'5', 0o755, None),
            ("./lib/vendor/x.py", b'0', 0o755, None),
        ]
    );
    assert_eq!(entries[2].data, b"web: gunicorn app:app\n");
    assert_eq!(packed.procfile.as_deref(), Some("web: gunicorn app:app\n"));
    assert_eq!(
        packed.release.as_deref(),
        Some("---\ndefault_process_types:\n  web: python app.py\n")
    );
    assert_eq!(packed.entries, summary.len() as u64);
    let file_bytes: usize = entries
        .iter()
        .filter(|e| e.kind == b'0')
        .map(|e| e.data.len())
        .sum();
    assert_eq!(packed.uncompressed_bytes, file_bytes as u64);
    // debug.log, lib/vendor/x.log, tmp/, tmp/cache.bin
    assert_eq!(packed.ignored_entries, 4);

    // sha256 and size describe exactly the bytes written.
    assert_eq!(packed.compressed_bytes, slug.len() as u64);
    assert_eq!(packed.sha256, hex::encode(Sha256::digest(&slug)));
    // gzip header: no name, mtime 0, OS Unix.
    assert_eq!(&slug[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&slug[4..8], &[0, 0, 0, 0]);
    assert_eq!(slug[9], 3);

    // The output unpacks with GNU tar's view of names too (no leading `/`, no `..`).
    for entry in &entries {
        assert!(entry.name.starts_with("./"), "{}", entry.name);
    }
}

#[test]
fn pack_is_deterministic() {
    let ignore = SlugIgnore::parse("*.log\n");
    let (first, first_bytes) = pack_bytes(&sample_app(), "app/", &ignore).unwrap();
    let (second, second_bytes) = pack_bytes(&sample_app(), "./app", &ignore).unwrap();
    assert_eq!(first_bytes, second_bytes);
    assert_eq!(first, second);
    assert_eq!(first.sha256, hex::encode(Sha256::digest(&second_bytes)));
}

#[test]
fn pack_without_prefix_and_without_root_entry() {
    let mut tar = InputTar::new();
    tar.file("Procfile", 0o644, b"web: x\n")
        .dir("src")
        .file("src/a", 0o644, b"a");
    let (packed, slug) = pack_bytes(&tar.bytes(), "", &SlugIgnore::empty()).unwrap();
    let names: Vec<String> = read_slug(&slug).into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["./", "./Procfile", "./src/", "./src/a"]);
    assert_eq!(packed.entries, 4);

    // `tar -c .` style names.
    let mut tar = InputTar::new();
    tar.dir("./").file("./a", 0o644, b"a");
    let (_, slug) = pack_bytes(&tar.bytes(), "", &SlugIgnore::empty()).unwrap();
    let names: Vec<String> = read_slug(&slug).into_iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["./", "./a"]);

    // Empty input still yields a valid slug with just the root.
    let (packed, slug) = pack_bytes(&[0u8; 1024], "app", &SlugIgnore::empty()).unwrap();
    assert_eq!(read_slug(&slug).len(), 1);
    assert_eq!(packed.procfile, None);
}

#[test]
fn pack_rejects_unsafe_and_bad_input() {
    let ignore = SlugIgnore::empty();
    let unsafe_cases = ["app/../x", "../x", "/etc/passwd", "app/a/../../b"];
    for name in unsafe_cases {
        let mut tar = InputTar::new();
        tar.dir("app/").file(name, 0o644, b"x");
        let err = pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err();
        assert!(matches!(err, SlugError::UnsafePath { .. }), "{name}: {err}");
    }
    let err = {
        let mut tar = InputTar::new();
        tar.dir("app/").file("app/../x", 0o644, b"x");
        pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err()
    };
    assert_eq!(
        err.to_string(),
        "unsafe path \"app/../x\" in the input archive: '..' components are not allowed"
    );

    let mut tar = InputTar::new();
    tar.dir("app/").file("other/x", 0o644, b"x");
    let err = pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err();
    assert!(matches!(err, SlugError::OutsidePrefix { .. }), "{err}");

    let mut tar = InputTar::new();
    tar.dir("app/").hard_link("app/b", "app/missing");
    let err = pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err();
    assert!(matches!(err, SlugError::DanglingHardLink { .. }), "{err}");

    // A hard link to an ignored file is dangling too.
    let mut tar = InputTar::new();
    tar.dir("app/")
        .file("app/a.log", 0o644, b"x")
        .hard_link("app/b", "app/a.log");
    let err = pack_bytes(&tar.bytes(), "app", &SlugIgnore::parse("*.log")).unwrap_err();
    assert!(matches!(err, SlugError::DanglingHardLink { .. }), "{err}");

    let big = vec![b'#'; MAX_CAPTURED_FILE_BYTES as usize + 1];
    let mut tar = InputTar::new();
    tar.dir("app/").file("app/Procfile", 0o644, &big);
    let err = pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err();
    assert!(matches!(err, SlugError::TooLarge { .. }), "{err}");
    assert!(
        err.to_string().starts_with("Procfile is 1048577 bytes"),
        "{err}"
    );

    let mut tar = InputTar::new();
    tar.dir("app/").file("app/.release", 0o644, &[0xff, 0xfe]);
    let err = pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err();
    assert_eq!(err.to_string(), ".release is not valid UTF-8 text");

    let mut tar = InputTar::new();
    tar.file("app", 0o644, b"x");
    let err = pack_bytes(&tar.bytes(), "app", &ignore).unwrap_err();
    assert!(
        err.to_string().contains("the app root must be a directory"),
        "{err}"
    );

    // Truncated in the middle of a file's data: an error, not a short slug.
    let mut tar = InputTar::new();
    tar.dir("app/").file("app/data", 0o644, &[7u8; 5000]);
    let bytes = tar.bytes();
    let err = pack_bytes(&bytes[..512 * 2 + 1000], "app", &ignore).unwrap_err();
    assert!(err.to_string().contains("ends in the middle"), "{err}");

    // Corrupt header checksum.
    let mut bytes = sample_app();
    bytes[512 * 2 + 10] ^= 0x55;
    let err = pack_bytes(&bytes, "app", &ignore).unwrap_err();
    assert!(matches!(err, SlugError::Tar { .. }), "{err}");
}

#[test]
fn names_around_the_100_byte_field_and_git_lookalikes() {
    let mut tar = InputTar::new();
    tar.dir("app/");
    // Output names gain "./": 97 + 2 = 99, 98 + 2 = 100, 99 + 2 = 101 bytes.
    let names: Vec<String> = (97..=99).map(|len| "n".repeat(len)).collect();
    for (i, name) in names.iter().enumerate() {
        let mut name = name.clone();
        name.replace_range(0..1, &i.to_string());
        tar.file(&format!("app/{name}"), 0o644, name.as_bytes());
    }
    tar.dir("app/.github/")
        .file("app/.gitignore", 0o644, b"x")
        .file("app/.git", 0o644, b"gitdir: x");
    let (_, slug) = pack_bytes(&tar.bytes(), "app", &SlugIgnore::empty()).unwrap();
    let entries = read_slug(&slug);
    for entry in &entries[1..4] {
        assert_eq!(entry.name.len(), entry.data.len() + 2, "{}", entry.name);
        assert_eq!(entry.name.as_bytes()[2..], entry.data[..]);
    }
    let tail: Vec<&str> = entries[4..].iter().map(|e| e.name.as_str()).collect();
    assert_eq!(tail, vec!["./.github/", "./.gitignore"]);
}

#[test]
fn protected_files_survive_slugignore_and_symlinked_procfile_is_read() {
    let mut tar = InputTar::new();
    tar.dir("app/")
        .file("app/.release", 0o644, b"x: 1\n")
        .symlink("app/Procfile", "config/Procfile.prod")
        .dir("app/config/")
        .file("app/config/Procfile.prod", 0o644, b"web: prod\n");
    let (packed, slug) =
        pack_bytes(&tar.bytes(), "app", &SlugIgnore::parse(".*\nProcfile\n")).unwrap();
    assert_eq!(packed.procfile.as_deref(), Some("web: prod\n"));
    assert_eq!(packed.release.as_deref(), Some("x: 1\n"));
    let names: Vec<String> = read_slug(&slug).into_iter().map(|e| e.name).collect();
    assert_eq!(
        names,
        vec![
            "./",
            "./.release",
            "./Procfile",
            "./config/",
            "./config/Procfile.prod"
        ]
    );

    // A symlink that leaves the app is kept but not followed.
    let mut tar = InputTar::new();
    tar.dir("app/").symlink("app/Procfile", "../../etc/passwd");
    let (packed, slug) = pack_bytes(&tar.bytes(), "app", &SlugIgnore::empty()).unwrap();
    assert_eq!(packed.procfile, None);
    assert_eq!(
        read_slug(&slug)[1].link.as_deref(),
        Some("../../etc/passwd")
    );
}

/// Deterministic pseudo-random numbers; no extra crates.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Text-like generated bytes (compressible, like real app files), produced on demand; the
/// stream does not depend on how the reader slices it.
struct GeneratedData {
    rng: XorShift,
    remaining: u64,
    word: &'static [u8],
}

impl GeneratedData {
    fn new(seed: u64, size: u64) -> Self {
        GeneratedData {
            rng: XorShift(seed),
            remaining: size,
            word: b"",
        }
    }
}

impl Read for GeneratedData {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const WORDS: [&[u8]; 8] = [
            b"def ", b"return ", b"self", b".value", b"(x)", b"\n    ", b"import ", b"42",
        ];
        let n = (buf.len() as u64).min(self.remaining) as usize;
        let mut i = 0;
        while i < n {
            if self.word.is_empty() {
                self.word = WORDS[self.rng.below(WORDS.len())];
            }
            let take = self.word.len().min(n - i);
            buf[i..i + take].copy_from_slice(&self.word[..take]);
            self.word = &self.word[take..];
            i += take;
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn header_block(name: &str, size: u64) -> Vec<u8> {
    let mut header = Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_mode(0o644);
    header.set_size(size);
    header.set_entry_type(EntryType::Regular);
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// A tar stream of one `size`-byte file, generated while it is read.
fn streamed_tar(size: u64, seed: u64) -> impl Read {
    let padding = (512 - size % 512) % 512;
    io::Cursor::new(header_block("app/big.txt", size))
        .chain(GeneratedData::new(seed, size))
        .chain(io::repeat(0).take(padding + 1024))
}

/// Hashes the slug as it is written and decodes it on the fly to check the big file.
#[test]
fn pack_streams_a_big_file() {
    const SIZE: u64 = 20 * 1024 * 1024 + 123;
    let mut expected = Sha256::new();
    io::copy(
        &mut GeneratedData::new(99, SIZE),
        &mut HashSink(&mut expected),
    )
    .unwrap();

    let mut slug = Vec::new();
    let packed = pack(
        streamed_tar(SIZE, 99),
        &mut slug,
        &PackOptions {
            strip_prefix: "app",
            ignore: &SlugIgnore::empty(),
        },
    )
    .unwrap();
    assert_eq!(packed.uncompressed_bytes, SIZE);
    assert_eq!(packed.entries, 2);
    assert!(
        packed.compressed_bytes < SIZE / 4,
        "{}",
        packed.compressed_bytes
    );
    assert_eq!(packed.sha256, hex::encode(Sha256::digest(&slug)));

    let mut archive = tar::Archive::new(GzDecoder::new(&slug[..]));
    let mut entries = archive.entries().unwrap();
    assert_eq!(
        entries.next().unwrap().unwrap().path_bytes().as_ref(),
        b"./"
    );
    let mut big = entries.next().unwrap().unwrap();
    assert_eq!(big.path_bytes().as_ref(), b"./big.txt");
    let mut actual = Sha256::new();
    io::copy(&mut big, &mut HashSink(&mut actual)).unwrap();
    assert_eq!(actual.finalize(), expected.finalize());
}

struct HashSink<'a>(&'a mut Sha256);

impl Write for HashSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn random_text(rng: &mut XorShift, alphabet: &[&str], max_len: usize) -> String {
    let len = rng.below(max_len + 1);
    (0..len)
        .map(|_| alphabet[rng.below(alphabet.len())])
        .collect()
}

#[test]
fn fuzz_no_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let ignore = SlugIgnore::parse("*.log\n/tmp\n");
    let opts = PackOptions {
        strip_prefix: "app",
        ignore: &ignore,
    };

    // Pure noise, sometimes starting with a valid header so parsing gets further.
    for round in 0..300 {
        let len = rng.below(4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 2 == 0 {
            let mut start = header_block("app/x", rng.below(2048) as u64);
            start.append(&mut bytes);
            bytes = start;
        }
        let _ = pack(&bytes[..], io::sink(), &opts);
    }

    // A valid archive with a few bytes changed; header checksums are fixed up half the time
    // so the mutation reaches the entry logic instead of stopping at the checksum.
    let valid = sample_app();
    for round in 0..600 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(bytes.len());
            bytes[at] = rng.next() as u8;
            if round % 2 == 0 {
                let block = at / 512 * 512;
                let header = Header::from_byte_slice(&bytes[block..block + 512]);
                let mut fixed = header.clone();
                fixed.set_cksum();
                bytes[block..block + 512].copy_from_slice(fixed.as_bytes());
            }
        }
        let cut = if round % 5 == 0 {
            rng.below(bytes.len())
        } else {
            bytes.len()
        };
        let _ = pack(&bytes[..cut], io::sink(), &opts);
    }

    let alphabet = [
        "web",
        ":",
        " ",
        "\n",
        "\r\n",
        "\t",
        "#",
        "'",
        "\"",
        "\\",
        "-",
        "_",
        "A",
        "z",
        "0",
        "{",
        "}",
        ",",
        "~",
        "é",
        "\u{feff}",
        "default_process_types:",
        "  ",
        "*",
        "?",
        "[",
        "]",
        "!",
        "/",
        "**",
        ".",
    ];
    for _ in 0..3000 {
        let text = random_text(&mut rng, &alphabet, 40);
        let _ = parse_procfile(&text);
        let _ = parse_release_process_types(&text);
        let _ = parse_release_process_types(&format!("default_process_types:\n  {text}"));
        let ignore = SlugIgnore::parse(&text);
        let path = random_text(
            &mut rng,
            &["a", "b", "/", ".", "..", "x.log", "é", "[", "*"],
            8,
        );
        let _ = ignore.is_ignored(&path, rng.below(2) == 0);
    }
}
