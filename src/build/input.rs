//! The archive a build container starts from: the app source in `/app`, config vars in
//! ENV_DIR, an empty CACHE_DIR, the built-in buildpacks and the build driver. Everything is
//! owned by the unprivileged build user, so the container needs no root to use it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use include_dir::{include_dir, Dir, DirEntry};

/// The built-in buildpacks and the in-container driver, compiled into the binary so one
/// file is a complete builder.
static BUILDPACKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/buildpacks");

/// uid/gid of the `slug` user in the stack image.
pub const BUILD_UID: u64 = 1000;

/// Where the driver finds things (see `buildpacks/README.md`).
pub const DRIVER: &str = "/build/bin/build";

/// Writes the build input archive to `out`. `source` is a tar of the app tree (git archive).
pub fn write(
    source: impl Read,
    config: &BTreeMap<String, String>,
    out: impl Write,
) -> io::Result<()> {
    let mut tar = tar::Builder::new(out);
    for dir in [
        "app",
        "build",
        "build/env",
        "build/cache",
        "build/buildpacks",
        "build/bin",
    ] {
        append_dir(&mut tar, dir)?;
    }
    copy_source(source, &mut tar)?;
    for (name, value) in config {
        append_file(
            &mut tar,
            &format!("build/env/{name}"),
            0o600,
            value.as_bytes(),
        )?;
    }
    append_buildpacks(&mut tar, &BUILDPACKS)?;
    tar.into_inner()?.flush()
}

/// Config var names become file names in ENV_DIR: only shell-variable names are allowed.
pub fn valid_config_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 255
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(BUILD_UID);
    header.set_gid(BUILD_UID);
    header.set_size(size);
    header.set_mtime(0);
    header
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    tar.append_data(&mut h, path, io::empty())
}

fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut h, path, data)
}

/// Re-roots the source archive under `app/` and hands it to the build user, streaming
/// file contents straight through.
fn copy_source<W: Write>(source: impl Read, tar: &mut tar::Builder<W>) -> io::Result<()> {
    copy_tree(source, tar, "app/", &|_, _| true)
}

/// Copies a git archive into `tar` under `prefix`, owned by the build user, keeping only
/// the paths `keep(path, is_dir)` accepts. File contents stream straight through.
pub(super) fn copy_tree<W: Write>(
    source: impl Read,
    tar: &mut tar::Builder<W>,
    prefix: &str,
    keep: &dyn Fn(&str, bool) -> bool,
) -> io::Result<()> {
    let mut archive = tar::Archive::new(source);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            // git archive adds a pax global header with the commit id; nothing else is expected.
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        let relative = path.trim_start_matches("./").trim_end_matches('/');
        if relative.is_empty() || !keep(relative, kind.is_dir()) {
            continue;
        }
        let mode = entry.header().mode()? & 0o777;
        let mut h = header(kind, mode, entry.size());
        let target = format!("{prefix}{relative}");
        if kind.is_symlink() {
            let link = entry
                .link_name()?
                .ok_or_else(|| io::Error::other(format!("symlink {relative} has no target")))?
                .into_owned();
            tar.append_link(&mut h, &target, link)?;
        } else {
            tar.append_data(&mut h, &target, &mut entry)?;
        }
    }
    Ok(())
}

fn append_buildpacks<W: Write>(tar: &mut tar::Builder<W>, dir: &Dir<'_>) -> io::Result<()> {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => {
                let path = sub.path().to_string_lossy();
                if path != "bin" {
                    append_dir(tar, &target_path(&path))?;
                }
                append_buildpacks(tar, sub)?;
            }
            DirEntry::File(file) => {
                let path = file.path().to_string_lossy();
                if path == "README.md" {
                    continue;
                }
                // include_dir drops permission bits; everything shipped here is a script.
                append_file(tar, &target_path(&path), 0o755, file.contents())?;
            }
        }
    }
    Ok(())
}

/// `bin/build` → `build/bin/build`; `10-python/bin/detect` → `build/buildpacks/10-python/bin/detect`.
fn target_path(path: &str) -> String {
    if path == "bin" || path.starts_with("bin/") {
        format!("build/{path}")
    } else {
        format!("build/buildpacks/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_archive_layout() {
        let mut source = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        source.append_data(&mut h, "app.py", &b"print"[..]).unwrap();
        let source = source.into_inner().unwrap();
        let config = BTreeMap::from([("SECRET".to_owned(), "s3cr3t".to_owned())]);
        let mut out = Vec::new();
        write(&source[..], &config, &mut out).unwrap();

        let mut archive = tar::Archive::new(&out[..]);
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            assert_eq!(entry.header().uid().unwrap(), BUILD_UID);
            names.push(
                entry
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned(),
            );
        }
        for expected in [
            "app/app.py",
            "build/env/SECRET",
            "build/bin/build",
            "build/cache",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(names
            .iter()
            .any(|n| n.starts_with("build/buildpacks/") && n.ends_with("/bin/compile")));
        assert!(!names.iter().any(|n| n.ends_with("README.md")));
    }

    #[test]
    fn config_names() {
        for good in ["A", "_X", "DEIS_DISABLE_CACHE", "a1"] {
            assert!(valid_config_name(good), "{good}");
        }
        for bad in ["", "1A", "A-B", "../x", "A B", "A=B"] {
            assert!(!valid_config_name(bad), "{bad}");
        }
    }
}
