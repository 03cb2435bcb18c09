//! The archive a build container starts from: the app source in `/app`, config vars in
//! ENV_DIR, CACHE_DIR (restored from the app's cache, or empty), the buildpacks (built-in,
//! or the ones fetched from `BUILDPACK_URL`/`.buildpacks`), the app's SSH key when it has
//! one, and the build driver. Everything is owned by the unprivileged build user, so the
//! container needs no root to use it.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::Path;

use deis_slug::tar_writer::TarWriter;
use include_dir::{include_dir, Dir, DirEntry};

use super::fetch::FetchedBuildpack;
use super::submodule::FetchedSubmodule;

/// The built-in buildpacks and the in-container driver, compiled into the binary so one
/// file is a complete builder.
static BUILDPACKS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../../buildpacks");

/// uid/gid of the `slug` user in the stack image.
pub const BUILD_UID: u64 = 1000;

/// Where the driver finds things (see `buildpacks/README.md`).
pub const DRIVER: &str = "/build/bin/build";

/// Where the app's `SSH_KEY` goes in the container, with an ssh config that uses it.
pub const SSH_DIR: &str = "/build/ssh";

/// What goes into the input archive besides the source and the config.
#[derive(Debug, Default, Clone, Copy)]
pub struct Extras<'a> {
    /// A verified cache archive (see `cache::verify`), unpacked into CACHE_DIR.
    pub cache: Option<&'a Path>,
    /// Buildpacks to run in order instead of detecting among the built-in ones.
    pub buildpacks: Option<&'a [FetchedBuildpack]>,
    /// The app's private key (PEM/OpenSSH text), for buildpacks that fetch over ssh.
    pub ssh_key: Option<&'a str>,
    /// The stack's CA bundle plus the operator's CA (`--build-ca-file`).
    pub ca_bundle: Option<&'a [u8]>,
    /// Git submodules of the pushed commit, checked out on the host.
    pub submodules: &'a [FetchedSubmodule],
    /// `NAME=value` lines the driver reads at start (`/build/push.env`): what only the push
    /// knows, so that the container can be created before it arrives.
    pub push_env: &'a str,
    /// Which source paths go into `/app` (`project.toml`'s include/exclude); all without.
    pub keep_source: Option<&'a super::cnb::SourceFilter>,
    /// The Cloud Native Buildpacks driver, copied to [`CNB_DRIVER`] for CNB builds.
    pub cnb_driver: Option<&'a Path>,
}

/// Where the CNB driver goes; `bin/build` hands over to it (`BUILDPACK_SELECTION=cnb`).
pub const CNB_DRIVER: &str = "/build/bin/cnb";

/// Writes the build input archive to `out`. `source` is a tar of the app tree (git archive).
pub fn write(
    source: impl Read,
    config: &BTreeMap<String, String>,
    extras: &Extras<'_>,
    out: impl Write,
) -> io::Result<()> {
    let mut tar = TarWriter::new(out, BUILD_UID, 0);
    for dir in [
        "app",
        "build",
        "build/env",
        "build/cache",
        "build/buildpacks",
        "build/bin",
    ] {
        tar.dir(dir, 0o755)?;
    }
    match extras.keep_source {
        Some(filter) => copy_tree(source, &mut tar, "app/", &|path, is_dir| {
            filter.keeps(path, is_dir)
        })?,
        None => copy_source(source, &mut tar)?,
    }
    // A submodule's files are the source's too: include/exclude apply to them as well.
    let keep_in_app = |path: &str, is_dir: bool| {
        extras
            .keep_source
            .is_none_or(|filter| filter.keeps(path.strip_prefix("app/").unwrap_or(path), is_dir))
    };
    for submodule in extras.submodules {
        let target = format!("app/{}", submodule.path);
        append_host_dir(&mut tar, &submodule.dir, &target, &keep_in_app)?;
    }
    for (name, value) in config {
        tar.file(&format!("build/env/{name}"), 0o600, value.as_bytes())?;
    }
    if let Some(cache) = extras.cache {
        copy_cache(cache, &mut tar)?;
    }
    match extras.buildpacks {
        None => append_buildpacks(&mut tar, &BUILDPACKS, true)?,
        Some(fetched) => {
            append_buildpacks(&mut tar, &BUILDPACKS, false)?;
            for buildpack in fetched {
                let target = format!("build/buildpacks/{}", buildpack.name);
                tar.dir(&target, 0o755)?;
                append_host_dir(&mut tar, &buildpack.dir, &target, &|_, _| true)?;
            }
        }
    }
    if let Some(key) = extras.ssh_key {
        append_ssh(&mut tar, key)?;
    }
    if let Some(driver) = extras.cnb_driver {
        let mut file = std::fs::File::open(driver)?;
        let size = file.metadata()?.len();
        tar.file_from(CNB_DRIVER.trim_start_matches('/'), 0o755, size, &mut file)?;
    }
    tar.file("build/push.env", 0o644, extras.push_env.as_bytes())?;
    if let Some(bundle) = extras.ca_bundle {
        // A file entry only: the image's /etc keeps its owners, the bundle is root's as
        // on any system, readable by all.
        let path = super::SYSTEM_CA_BUNDLE.trim_start_matches('/');
        tar.set_owner(0);
        tar.file(path, 0o644, bundle)?;
        tar.set_owner(BUILD_UID);
    }
    tar.finish()?.flush()
}

/// Deis stores `SSH_KEY` base64-encoded; a plain PEM/OpenSSH key is accepted too.
pub fn decode_ssh_key(value: &str) -> String {
    use base64::Engine as _;
    let value = value.trim();
    if value.contains("-----BEGIN") {
        return format!("{value}\n");
    }
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    match base64::engine::general_purpose::STANDARD.decode(compact.as_bytes()) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) if text.contains("-----BEGIN") => format!("{}\n", text.trim()),
            _ => format!("{value}\n"),
        },
        Err(_) => format!("{value}\n"),
    }
}

fn append_ssh<W: Write>(tar: &mut TarWriter<W>, key: &str) -> io::Result<()> {
    let dir = SSH_DIR.trim_start_matches('/');
    tar.dir(dir, 0o700)?;
    tar.file(&format!("{dir}/id_key"), 0o600, key.as_bytes())?;
    let config = format!(
        "Host *\n  IdentityFile {SSH_DIR}/id_key\n  IdentitiesOnly yes\n  \
         StrictHostKeyChecking accept-new\n  UserKnownHostsFile {SSH_DIR}/known_hosts\n"
    );
    tar.file(&format!("{dir}/config"), 0o600, config.as_bytes())
}

/// Unpacks a verified cache archive (paths relative to CACHE_DIR) under `build/cache/`.
fn copy_cache<W: Write>(cache: &Path, tar: &mut TarWriter<W>) -> io::Result<()> {
    let file = std::fs::File::open(cache)?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let relative = path.trim_start_matches("./").trim_end_matches('/');
        if relative.is_empty() {
            continue;
        }
        let kind = entry.header().entry_type();
        let mode = entry.header().mode()? & 0o777;
        let target = format!("build/cache/{relative}");
        match kind {
            tar::EntryType::Regular => {
                let size = entry.size();
                tar.file_from(&target, mode, size, &mut entry)?;
            }
            tar::EntryType::Directory => tar.dir(&target, mode)?,
            tar::EntryType::Symlink => {
                if let Some(link) = entry.link_name_bytes() {
                    tar.symlink(&target, &link)?;
                }
            }
            tar::EntryType::Link => {
                if let Some(link) = entry.link_name()? {
                    let link = format!("build/cache/{}", link.to_string_lossy());
                    tar.hard_link(&target, link.as_bytes(), mode)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A host directory (a fetched buildpack or submodule) under `target`, in sorted order;
/// `.git` is left out, symlinks stay symlinks (never followed), anything that is not a
/// file, directory or link is skipped, and so is what `keep(target path, is_dir)` refuses.
pub(super) fn append_host_dir<W: Write>(
    tar: &mut TarWriter<W>,
    dir: &Path,
    target: &str,
    keep: &dyn Fn(&str, bool) -> bool,
) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(dir = %dir.display(), "skipping a buildpack file whose name is not UTF-8");
            continue;
        };
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        let child = format!("{target}/{name}");
        let meta = std::fs::symlink_metadata(&path)?;
        if !keep(&child, meta.is_dir()) {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path)?;
            tar.symlink(&child, link.as_os_str().as_encoded_bytes())?;
        } else if meta.is_dir() {
            tar.dir(&child, 0o755)?;
            append_host_dir(tar, &path, &child, keep)?;
        } else if meta.is_file() {
            tar.file_from(&child, mode, meta.len(), &mut std::fs::File::open(&path)?)?;
        }
    }
    Ok(())
}

/// Config var names become file names in ENV_DIR: only shell-variable names are allowed.
pub fn valid_config_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 255
}

/// Re-roots the source archive under `app/` and hands it to the build user, streaming
/// file contents straight through.
fn copy_source<W: Write>(source: impl Read, tar: &mut TarWriter<W>) -> io::Result<()> {
    copy_tree(source, tar, "app/", &|_, _| true)
}

/// Copies a git archive into `tar` under `prefix`, owned by the build user, keeping only
/// the paths `keep(path, is_dir)` accepts. File contents stream straight through.
pub(super) fn copy_tree<W: Write>(
    source: impl Read,
    tar: &mut TarWriter<W>,
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
        let target = format!("{prefix}{relative}");
        if kind.is_symlink() {
            let link = entry
                .link_name_bytes()
                .ok_or_else(|| io::Error::other(format!("symlink {relative} has no target")))?;
            tar.symlink(&target, &link)?;
        } else if kind.is_dir() {
            tar.dir(&target, mode)?;
        } else {
            let size = entry.size();
            tar.file_from(&target, mode, size, &mut entry)?;
        }
    }
    Ok(())
}

/// The driver, and the built-in buildpacks when `with_builtin` is set.
fn append_buildpacks<W: Write>(
    tar: &mut TarWriter<W>,
    dir: &Dir<'_>,
    with_builtin: bool,
) -> io::Result<()> {
    for entry in dir.entries() {
        match entry {
            DirEntry::Dir(sub) => {
                let path = sub.path().to_string_lossy();
                let is_driver = path == "bin" || path.starts_with("bin/");
                if !is_driver && !with_builtin {
                    continue;
                }
                if path != "bin" {
                    tar.dir(&target_path(&path), 0o755)?;
                }
                append_buildpacks(tar, sub, with_builtin)?;
            }
            DirEntry::File(file) => {
                let path = file.path().to_string_lossy();
                if path == "README.md" {
                    continue;
                }
                // include_dir drops permission bits; everything shipped here is a script.
                tar.file(&target_path(&path), 0o755, file.contents())?;
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
        write(&source[..], &config, &Extras::default(), &mut out).unwrap();

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

    fn names_of(archive: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(archive);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let name = e
                    .path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_owned();
                // The CA bundle is root's, as on any system; all else the build user's.
                let owner = if name == "etc/ssl/certs/ca-certificates.crt" {
                    0
                } else {
                    BUILD_UID
                };
                assert_eq!(e.header().uid().unwrap(), owner, "{name}");
                name
            })
            .collect()
    }

    #[test]
    fn fetched_buildpacks_cache_and_key_go_in() {
        let host = tempfile::tempdir().unwrap();
        let bp = host.path().join("bp");
        std::fs::create_dir_all(bp.join("bin")).unwrap();
        std::fs::create_dir_all(bp.join(".git")).unwrap();
        std::fs::write(bp.join("bin/compile"), "#!/bin/sh\n").unwrap();
        std::fs::write(bp.join(".git/HEAD"), "x").unwrap();
        let fetched = [FetchedBuildpack {
            name: "01-bp".into(),
            dir: bp,
            version: "abc".into(),
        }];
        let mut cache = Vec::new();
        let mut engine = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        engine
            .append_data(&mut h, "cache/dep.txt", &b"dep"[..])
            .unwrap();
        crate::cache::pack(&engine.into_inner().unwrap()[..], &mut cache).unwrap();
        let cache_path = host.path().join("cache.tgz");
        std::fs::write(&cache_path, &cache).unwrap();

        let mut source = tar::Builder::new(Vec::new());
        source.append_data(&mut h, "app.py", &b"abc"[..]).unwrap();
        let source = source.into_inner().unwrap();
        let extras = Extras {
            cache: Some(&cache_path),
            buildpacks: Some(&fetched),
            ssh_key: Some("-----BEGIN KEY-----\nx\n"),
            ca_bundle: Some(b"-----BEGIN CERTIFICATE-----\n"),
            submodules: &[],
            push_env: "SOURCE_VERSION=abc\n",
            keep_source: None,
            cnb_driver: None,
        };
        let mut out = Vec::new();
        write(&source[..], &BTreeMap::new(), &extras, &mut out).unwrap();
        let names = names_of(&out);
        for expected in [
            "build/buildpacks/01-bp/bin/compile",
            "build/cache/dep.txt",
            "build/bin/build",
            "build/ssh/id_key",
            "build/ssh/config",
            "etc/ssl/certs/ca-certificates.crt",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing: {names:?}"
            );
        }
        assert!(!names.iter().any(|n| n.contains(".git")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("10-python")), "{names:?}");
        // Only the bundle itself: the image's /etc keeps its owners and modes.
        assert!(
            !names.iter().any(|n| n == "etc" || n == "etc/ssl"),
            "{names:?}"
        );
    }

    #[test]
    fn project_exclude_and_include_apply_to_submodules_too() {
        let host = tempfile::tempdir().unwrap();
        let checkout = host.path().join("lib");
        std::fs::create_dir_all(checkout.join("docs")).unwrap();
        std::fs::write(checkout.join("docs/big.pdf"), "pdf").unwrap();
        std::fs::write(checkout.join("code.py"), "py").unwrap();
        let submodules = [
            FetchedSubmodule {
                path: "vendor/lib".into(),
                dir: checkout.clone(),
            },
            FetchedSubmodule {
                path: "lib".into(),
                dir: checkout,
            },
        ];
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        let mut source = tar::Builder::new(Vec::new());
        source.append_data(&mut h, "app.py", &b"abc"[..]).unwrap();
        let source = source.into_inner().unwrap();
        let names_with = |filter: &crate::cnb::SourceFilter| {
            let extras = Extras {
                cache: None,
                buildpacks: Some(&[]),
                ssh_key: None,
                ca_bundle: None,
                submodules: &submodules,
                push_env: "",
                keep_source: Some(filter),
                cnb_driver: None,
            };
            let mut out = Vec::new();
            write(&source[..], &BTreeMap::new(), &extras, &mut out).unwrap();
            let mut names: Vec<String> = names_of(&out)
                .into_iter()
                .filter(|n| n.starts_with("app/") && !n.ends_with('/'))
                .collect();
            names.sort();
            names
        };
        let excluded = names_with(&crate::cnb::SourceFilter::new(false, "vendor/\ndocs/\n"));
        assert_eq!(excluded, ["app/app.py", "app/lib/code.py"]);
        let included = names_with(&crate::cnb::SourceFilter::new(true, "*.py\n"));
        assert_eq!(
            included,
            [
                "app/app.py",
                "app/lib/code.py",
                "app/lib/docs",
                "app/vendor/lib/code.py",
                "app/vendor/lib/docs"
            ]
        );
    }

    #[test]
    fn ssh_keys_are_decoded_from_base64() {
        use base64::Engine as _;
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----";
        let encoded = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(decode_ssh_key(&encoded), format!("{pem}\n"));
        assert_eq!(decode_ssh_key(pem), format!("{pem}\n"));
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
