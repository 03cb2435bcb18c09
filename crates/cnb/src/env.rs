//! Environments built from layers: the layer path variables (`bin/` on `PATH`, …) and the
//! environment variable files of `env/`, `env.build/`, `env.launch/` with their
//! modification rules (`.override`, `.default`, `.append`, `.prepend`, `.delim`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use crate::{files, Error, Result};

/// When layer paths are used: while later buildpacks build, or when the app runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Build,
    Launch,
}

/// A set of environment variables, in a deterministic order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    /// This process's environment (variables whose name or value is not UTF-8 are left out).
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(name, value)| {
                    Some((name.into_string().ok()?, value.into_string().ok()?))
                })
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }

    pub fn remove(&mut self, name: &str) {
        self.vars.remove(name);
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// As pairs for `Command::envs`.
    pub fn to_os(&self) -> Vec<(OsString, OsString)> {
        self.vars
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    /// Puts `value` in front of a `:`-separated list.
    pub fn prepend_path(&mut self, name: &str, value: &str) {
        let joined = match self.get(name) {
            Some(existing) if !existing.is_empty() => format!("{value}:{existing}"),
            _ => value.to_owned(),
        };
        self.set(name, joined);
    }

    /// A layer's well-known directories on the search paths of `phase`. A link to a
    /// directory counts (`bin -> jdk/bin`), as it does for the CNB lifecycle: only the
    /// path goes on the search path, nothing is read through it here.
    pub fn add_layer_paths(&mut self, layer: &Path, phase: Phase) {
        let paths: &[(&str, &str)] = match phase {
            Phase::Launch => &[("bin", "PATH"), ("lib", "LD_LIBRARY_PATH")],
            Phase::Build => &[
                ("bin", "PATH"),
                ("lib", "LD_LIBRARY_PATH"),
                ("lib", "LIBRARY_PATH"),
                ("include", "CPATH"),
                ("pkgconfig", "PKG_CONFIG_PATH"),
            ],
        };
        for (dir, name) in paths {
            let path = layer.join(dir);
            if path.is_dir() {
                self.prepend_path(name, &path.display().to_string());
            }
        }
    }

    /// Applies the variable files of one directory (not its subdirectories): the file name
    /// up to the first `.` is the variable, the rest says how.
    pub fn apply_env_dir(&mut self, dir: &Path) -> Result<()> {
        let names = files::sorted_names(dir)?;
        let mut delimiters = BTreeMap::new();
        for name in &names {
            if let Some(var) = name.strip_suffix(".delim") {
                let text = files::read_text(&dir.join(name))?.unwrap_or_default();
                delimiters.insert(var.to_owned(), text);
            }
        }
        for name in &names {
            let path = dir.join(name);
            if files::is_dir(&path) || name.ends_with(".delim") {
                continue;
            }
            let (var, action) = match name.split_once('.') {
                Some((var, action)) => (var, action),
                None => (name.as_str(), "override"),
            };
            if var.is_empty() || var.contains('=') {
                return Err(Error::file(&path, "not an environment variable name"));
            }
            let value = files::read_text(&path)?.unwrap_or_default();
            let delimiter = delimiters.get(var).map(String::as_str).unwrap_or("");
            let existing = self.get(var).filter(|v| !v.is_empty()).map(str::to_owned);
            let new = match (action, existing) {
                ("override", _) => value,
                ("default", Some(_)) => continue,
                ("default", None) => value,
                ("append", Some(existing)) => format!("{existing}{delimiter}{value}"),
                ("prepend", Some(existing)) => format!("{value}{delimiter}{existing}"),
                ("append" | "prepend", None) => value,
                // Unknown suffixes (e.g. editor backups) change nothing.
                _ => continue,
            };
            self.set(var, new);
        }
        Ok(())
    }
}

impl FromIterator<(String, String)> for Env {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Env {
        Env {
            vars: iter.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modification_rules() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, value: &str| std::fs::write(dir.path().join(name), value).unwrap();
        write("GREETING", "hello");
        write("MODE.default", "dev");
        write("KEEP.default", "ignored");
        write("LIST.append", "b");
        write("LIST.delim", ",");
        write("FRONT.prepend", "/x");
        write("FRONT.delim", ":");
        write("NEW.append", "only");
        write("OVER.override", "o");
        let mut env: Env = [
            ("KEEP".to_owned(), "mine".to_owned()),
            ("LIST".to_owned(), "a".to_owned()),
            ("FRONT".to_owned(), "/y".to_owned()),
            ("OVER".to_owned(), "old".to_owned()),
        ]
        .into_iter()
        .collect();
        env.apply_env_dir(dir.path()).unwrap();
        assert_eq!(env.get("GREETING"), Some("hello"));
        assert_eq!(env.get("MODE"), Some("dev"));
        assert_eq!(env.get("KEEP"), Some("mine"));
        assert_eq!(env.get("LIST"), Some("a,b"));
        assert_eq!(env.get("FRONT"), Some("/x:/y"));
        assert_eq!(env.get("NEW"), Some("only"));
        assert_eq!(env.get("OVER"), Some("o"));
    }

    #[test]
    fn layer_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("bin")).unwrap();
        std::fs::create_dir_all(dir.path().join("include")).unwrap();
        let mut env: Env = [("PATH".to_owned(), "/usr/bin".to_owned())]
            .into_iter()
            .collect();
        env.add_layer_paths(dir.path(), Phase::Launch);
        assert_eq!(
            env.get("PATH"),
            Some(format!("{}/bin:/usr/bin", dir.path().display()).as_str())
        );
        assert_eq!(env.get("CPATH"), None);
        env.add_layer_paths(dir.path(), Phase::Build);
        assert!(env.get("CPATH").is_some());

        // A layer whose bin/ is a link into the software it installed.
        let jdk = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(jdk.path().join("jdk/bin")).unwrap();
        std::os::unix::fs::symlink("jdk/bin", jdk.path().join("bin")).unwrap();
        let mut env = Env::default();
        env.add_layer_paths(jdk.path(), Phase::Launch);
        assert_eq!(
            env.get("PATH"),
            Some(jdk.path().join("bin").display().to_string().as_str())
        );
    }
}
