//! `buildpack.toml`: what a buildpack is (id, version, API) and, for a composite
//! buildpack, its order of groups. The buildpacks of a build are the directories the
//! builder put in the buildpacks directory, in name order; composite buildpacks find the
//! buildpacks their order names among those and below them (a composite may ship its
//! components inside its own directory).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::api::{self, Api};
use crate::{files, Error, Result};

pub const DESCRIPTOR: &str = "buildpack.toml";
/// How deep below a listed buildpack we look for components of a composite.
const MAX_COMPONENT_DEPTH: usize = 4;

/// One buildpack of the build.
#[derive(Debug, Clone)]
pub struct Buildpack {
    pub id: String,
    pub version: String,
    pub name: Option<String>,
    pub api: Api,
    pub dir: PathBuf,
    /// User config is not exported to its executables (it stays in the platform dir).
    pub clear_env: bool,
    /// A composite buildpack's groups; empty for a component buildpack.
    pub order: Vec<Vec<Reference>>,
}

/// An entry of a composite's group.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Reference {
    pub id: String,
    pub version: Option<String>,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Deserialize)]
struct RawDescriptor {
    api: Option<String>,
    buildpack: Option<RawInfo>,
    #[serde(default)]
    order: Vec<RawOrder>,
}

#[derive(Deserialize)]
struct RawInfo {
    id: String,
    version: Option<String>,
    name: Option<String>,
    #[serde(rename = "clear-env", default)]
    clear_env: bool,
}

#[derive(Deserialize)]
struct RawOrder {
    #[serde(default)]
    group: Vec<Reference>,
}

impl Buildpack {
    /// Reads and checks `dir/buildpack.toml`.
    pub fn load(dir: &Path) -> Result<Buildpack> {
        let path = dir.join(DESCRIPTOR);
        let raw: RawDescriptor =
            files::read_toml(&path)?.ok_or_else(|| Error::file(&path, "missing"))?;
        let api_text = raw.api.ok_or_else(|| {
            Error::file(
                &path,
                "`api` is missing: name the Buildpack API version, e.g. api = \"0.10\"",
            )
        })?;
        let api = Api::parse(&api_text).ok_or_else(|| {
            Error::file(
                &path,
                format!("api = {api_text:?} is not a version (<major>.<minor>)"),
            )
        })?;
        if !api.is_supported() {
            return Err(Error::file(
                &path,
                format!(
                    "Buildpack API {api} is not supported; this builder supports {} to {}",
                    api::OLDEST,
                    api::NEWEST
                ),
            ));
        }
        let info = raw
            .buildpack
            .ok_or_else(|| Error::file(&path, "the [buildpack] table is missing"))?;
        check_id(&info.id).map_err(|problem| Error::file(&path, problem))?;
        let order: Vec<Vec<Reference>> = raw.order.into_iter().map(|o| o.group).collect();
        for (index, group) in order.iter().enumerate() {
            if group.is_empty() {
                return Err(Error::file(
                    &path,
                    format!("order group {} is empty", index + 1),
                ));
            }
            for reference in group {
                check_id(&reference.id).map_err(|problem| Error::file(&path, problem))?;
            }
        }
        if order.is_empty() {
            for executable in ["bin/detect", "bin/build"] {
                let file = dir.join(executable);
                if !file.is_file() {
                    return Err(Error::file(
                        &file,
                        format!("missing: buildpack {} needs {executable}", info.id),
                    ));
                }
            }
        }
        Ok(Buildpack {
            id: info.id,
            version: info.version.unwrap_or_default(),
            name: info.name,
            api,
            dir: dir.to_owned(),
            clear_env: info.clear_env,
            order,
        })
    }

    /// `id@version`, or the id alone when it has no version.
    pub fn label(&self) -> String {
        if self.version.is_empty() {
            self.id.clone()
        } else {
            format!("{}@{}", self.id, self.version)
        }
    }

    /// The buildpack's directory name under the layers root: ids may contain `/`.
    pub fn escaped_id(&self) -> String {
        self.id.replace('/', "_")
    }
}

/// Ids: letters, digits, `.`, `/` and `-`; not one of the names the lifecycle reserves.
fn check_id(id: &str) -> Result<(), String> {
    let valid = !id.is_empty()
        && id.len() <= 256
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '/' | '-'))
        && !id
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..");
    if !valid {
        return Err(format!(
            "buildpack id {id:?} is invalid: use letters, digits, '.', '/' and '-'"
        ));
    }
    if ["app", "config", "generated", "sbom"].contains(&id) {
        return Err(format!("buildpack id {id:?} is reserved"));
    }
    Ok(())
}

/// The buildpacks of a build: the listed ones (the top-level group, in order) and every
/// buildpack found below them, by id.
#[derive(Debug, Default)]
pub struct Catalog {
    pub listed: Vec<Buildpack>,
    by_id: BTreeMap<String, Vec<Buildpack>>,
}

impl Catalog {
    /// Loads every directory of `root` (in name order) as a listed buildpack.
    pub fn load(root: &Path) -> Result<Catalog> {
        let mut catalog = Catalog::default();
        for name in files::sorted_names(root)? {
            let dir = root.join(&name);
            if !files::is_dir(&dir) {
                continue;
            }
            let buildpack = Buildpack::load(&dir)?;
            catalog.add(buildpack.clone());
            catalog.listed.push(buildpack);
            catalog.find_components(&dir, 1)?;
        }
        Ok(catalog)
    }

    fn find_components(&mut self, dir: &Path, depth: usize) -> Result<()> {
        if depth > MAX_COMPONENT_DEPTH {
            return Ok(());
        }
        for name in files::sorted_names(dir)? {
            let child = dir.join(&name);
            if name.starts_with('.') || !files::is_dir(&child) {
                continue;
            }
            if child.join(DESCRIPTOR).is_file() {
                self.add(Buildpack::load(&child)?);
            }
            self.find_components(&child, depth + 1)?;
        }
        Ok(())
    }

    fn add(&mut self, buildpack: Buildpack) {
        self.by_id
            .entry(buildpack.id.clone())
            .or_default()
            .push(buildpack);
    }

    /// The buildpack a group entry names: the exact version, or the only (first) one.
    pub fn find(&self, reference: &Reference) -> Option<&Buildpack> {
        let candidates = self.by_id.get(&reference.id)?;
        match &reference.version {
            Some(version) => candidates.iter().find(|bp| &bp.version == version),
            None => candidates.first(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_buildpack(dir: &Path, toml: &str) {
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(dir.join("bin/detect"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.join("bin/build"), "#!/bin/sh\n").unwrap();
        std::fs::write(dir.join(DESCRIPTOR), toml).unwrap();
    }

    fn load_error(toml: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        write_buildpack(dir.path(), toml);
        Buildpack::load(dir.path()).unwrap_err().to_string()
    }

    #[test]
    fn descriptors_are_checked() {
        let ok = "api = \"0.10\"\n[buildpack]\nid = \"example/hello\"\nversion = \"1.0.0\"\n";
        let dir = tempfile::tempdir().unwrap();
        write_buildpack(dir.path(), ok);
        let bp = Buildpack::load(dir.path()).unwrap();
        assert_eq!(bp.label(), "example/hello@1.0.0");
        assert_eq!(bp.escaped_id(), "example_hello");

        let error = load_error("api = \"0.7\"\n[buildpack]\nid = \"x\"\n");
        assert!(error.ends_with("buildpack.toml: Buildpack API 0.7 is not supported; this builder supports 0.8 to 0.11"), "{error}");
        let error = load_error("api = \"0.10\"\n[buildpack\nid = \"x\"\n");
        assert!(
            error.contains("buildpack.toml: invalid TOML at line 2"),
            "{error}"
        );
        let error = load_error("[buildpack]\nid = \"x\"\n");
        assert!(error.contains("`api` is missing"), "{error}");
        let error = load_error("api = \"0.9\"\n[buildpack]\nid = \"a b\"\n");
        assert!(error.contains("buildpack id \"a b\" is invalid"), "{error}");
        let error = load_error("api = \"0.9\"\n");
        assert!(error.contains("[buildpack] table is missing"), "{error}");
    }

    #[test]
    fn composites_find_their_components_below_them() {
        let root = tempfile::tempdir().unwrap();
        let meta = root.path().join("01-meta");
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join(DESCRIPTOR),
            "api = \"0.10\"\n[buildpack]\nid = \"meta\"\nversion = \"1.0.0\"\n\
             [[order]]\n[[order.group]]\nid = \"a\"\n[[order.group]]\nid = \"b\"\noptional = true\n",
        )
        .unwrap();
        write_buildpack(
            &meta.join("a"),
            "api = \"0.10\"\n[buildpack]\nid = \"a\"\nversion = \"1.0.0\"\n",
        );
        write_buildpack(
            &meta.join("b"),
            "api = \"0.10\"\n[buildpack]\nid = \"b\"\nversion = \"2.0.0\"\n",
        );
        let catalog = Catalog::load(root.path()).unwrap();
        assert_eq!(catalog.listed.len(), 1);
        assert_eq!(catalog.listed[0].order[0].len(), 2);
        let b = Reference {
            id: "b".into(),
            version: Some("2.0.0".into()),
            optional: true,
        };
        assert_eq!(catalog.find(&b).unwrap().id, "b");
    }
}
