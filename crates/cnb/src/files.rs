//! File helpers: bounded reads of the TOML files buildpacks write, and moving layer trees
//! between the layers directory and the cache (which may be different mounts).

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::{Error, Result};

/// Largest metadata file (buildpack.toml, launch.toml, a layer's TOML, a plan) we read.
pub const MAX_TOML_BYTES: u64 = 1 << 20;

/// The file's text, `None` when it does not exist.
pub fn read_text(path: &Path) -> Result<Option<String>> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io(path, error)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_TOML_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| Error::io(path, error))?;
    if bytes.len() as u64 > MAX_TOML_BYTES {
        return Err(Error::file(
            path,
            format!("larger than {MAX_TOML_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| Error::file(path, "not UTF-8 text"))
}

/// Parses a TOML file; `None` when it does not exist. A parse error names the file, the
/// line and what is wrong.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    let Some(text) = read_text(path)? else {
        return Ok(None);
    };
    parse_toml(path, &text).map(Some)
}

pub fn parse_toml<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    toml::from_str(text).map_err(|error| Error::file(path, toml_problem(text, &error)))
}

/// `line N: message`, on one line.
fn toml_problem(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim().replace('\n', " ");
    match error.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("invalid TOML at line {line}: {message}")
        }
        None => format!("invalid TOML: {message}"),
    }
}

/// Copies a tree: directories, files (with their permission bits) and symlinks (never
/// followed). Anything else is skipped.
pub fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from).map_err(|e| Error::io(from, e))?;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(|e| Error::io(from, e))?;
        return symlink(target, to).map_err(|e| Error::io(to, e));
    }
    if meta.is_file() {
        fs::copy(from, to).map_err(|e| Error::io(to, e))?;
        return Ok(());
    }
    if !meta.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    let mut entries = fs::read_dir(from)
        .map_err(|e| Error::io(from, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::io(from, e))?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    fs::set_permissions(to, fs::Permissions::from_mode(meta.permissions().mode()))
        .map_err(|e| Error::io(to, e))
}

/// Moves a tree: a rename where it can be one, else a copy and a removal (the cache and
/// the app may be different mounts).
pub fn move_tree(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    copy_tree(from, to)?;
    remove(from)
}

/// Removes a file, link or tree; nothing there is fine.
pub fn remove(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error),
    };
    result.map_err(|e| Error::io(path, e))
}

/// The names in a directory, sorted; none when it does not exist.
pub fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(Error::io(dir, error)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        match entry.file_name().into_string() {
            Ok(name) => names.push(name),
            Err(name) => return Err(Error::file(&dir.join(&name), "the file name is not UTF-8")),
        }
    }
    names.sort();
    Ok(names)
}

/// Is `path` a directory (not following a final symlink)?
pub fn is_dir(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|meta| meta.is_dir())
}
