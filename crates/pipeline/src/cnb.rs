//! Cloud Native Buildpacks in the slug pipeline. A buildpack with a `buildpack.toml` is a
//! CNB; CNBs come from `BUILDPACK_URL`, `.buildpacks` or the project descriptor
//! `project.toml` (schema 0.1 `[[build.buildpacks]]`, 0.2 `[[io.buildpacks.group]]`),
//! whose `uri` is a URL fetched like any buildpack or a relative path to a buildpack in
//! the pushed source. A CNB build runs the static `deis-cnb` driver in the same build
//! container as a classic build; its `exclude`/`include` shape the source the build sees,
//! and the slug keeps the launch layers under `/app/.cnb`. Classic and CNB buildpacks are
//! not mixed in one build.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tokio_util::io::{StreamReader, SyncIoBridge};

use super::fetch::{
    directory_name, unpack_refusal, BuildpackUrl, FetchedBuildpack, Fetcher, Workspace,
    BUILDPACK_MAX_DEPTH, BUILDPACK_MAX_ENTRIES, CONTAINER_BUILDPACKS_DIR,
};
use super::{BuildError, Pipeline};
use crate::push::{Output, Push};
use deis_slug::{SlugIgnore, UnpackOptions};

/// Largest `project.toml` we read.
const MAX_PROJECT_FILE: usize = 64 * 1024;
pub const PROJECT_FILE: &str = "project.toml";

/// What a CNB build adds to a buildpack build.
#[derive(Debug, Clone)]
pub struct CnbBuild {
    /// The driver binary on this host.
    pub driver: PathBuf,
    /// `project.toml`'s `exclude`/`include`.
    pub filter: Option<Arc<SourceFilter>>,
}

/// Which source paths a CNB build sees.
#[derive(Debug)]
pub struct SourceFilter {
    include: bool,
    patterns: SlugIgnore,
}

impl SourceFilter {
    /// `include` (or exclude) gitignore `patterns`, one a line.
    #[cfg(test)]
    pub fn new(include: bool, patterns: &str) -> SourceFilter {
        SourceFilter {
            include,
            patterns: SlugIgnore::parse(patterns),
        }
    }

    /// With `include`, files matching (or below a match) and every directory; with
    /// `exclude`, everything but what matches and what is below it.
    pub fn keeps(&self, path: &str, is_dir: bool) -> bool {
        if self.include {
            is_dir || self.patterns.is_ignored(path, false)
        } else {
            !self.patterns.is_ignored(path, is_dir)
        }
    }
}

/// `project.toml`, both schemas, reduced to what builds use.
#[derive(Default)]
struct Project {
    /// Checked only when used: `BUILDPACK_URL` and `.buildpacks` take precedence.
    buildpacks: Vec<RawRef>,
    filter: Option<SourceFilter>,
}

impl Project {
    /// The listed buildpacks, each a URL or a directory of the pushed source.
    fn buildpacks(&self) -> Result<Vec<ProjectBuildpack>, BuildError> {
        let buildpacks = self
            .buildpacks
            .iter()
            .map(project_buildpack)
            .collect::<Result<Vec<_>, _>>()?;
        if buildpacks.len() > super::fetch::MAX_BUILDPACKS {
            return Err(project_error(format!(
                "{} buildpacks are listed; at most {} are supported",
                buildpacks.len(),
                super::fetch::MAX_BUILDPACKS
            )));
        }
        Ok(buildpacks)
    }
}

#[derive(Debug)]
enum ProjectBuildpack {
    Url(BuildpackUrl),
    /// A directory of the pushed source (normalized, relative).
    Path(String),
}

#[derive(Deserialize, Default)]
struct RawProject {
    #[serde(rename = "_", default)]
    meta: Option<RawMeta>,
    #[serde(default)]
    build: Option<RawBuild>,
    #[serde(default)]
    io: Option<RawIo>,
}

#[derive(Deserialize, Default)]
struct RawMeta {
    #[serde(rename = "schema-version")]
    schema_version: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawBuild {
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Option<Vec<String>>,
    #[serde(default)]
    buildpacks: Vec<RawRef>,
}

#[derive(Deserialize, Default)]
struct RawIo {
    #[serde(default)]
    buildpacks: Option<RawIoBuildpacks>,
}

#[derive(Deserialize, Default)]
struct RawIoBuildpacks {
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Option<Vec<String>>,
    #[serde(default)]
    group: Vec<RawRef>,
}

#[derive(Deserialize)]
struct RawRef {
    id: Option<String>,
    uri: Option<String>,
    script: Option<toml::Value>,
}

fn project_error(problem: impl std::fmt::Display) -> BuildError {
    BuildError::Plan(format!("{PROJECT_FILE}: {problem}"))
}

fn parse_project(text: &str) -> Result<Project, BuildError> {
    let raw: RawProject = toml::from_str(text).map_err(|error| {
        let message = error.message().trim().replace('\n', " ");
        match error.span() {
            Some(span) => {
                let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                project_error(format!("invalid TOML at line {line}: {message}"))
            }
            None => project_error(format!("invalid TOML: {message}")),
        }
    })?;
    let schema = raw
        .meta
        .and_then(|meta| meta.schema_version)
        .unwrap_or_else(|| "0.1".to_owned());
    let (include, exclude, refs) = match schema.as_str() {
        "0.1" => {
            let build = raw.build.unwrap_or_default();
            (build.include, build.exclude, build.buildpacks)
        }
        "0.2" => {
            let io = raw.io.and_then(|io| io.buildpacks).unwrap_or_default();
            (io.include, io.exclude, io.group)
        }
        other => {
            return Err(project_error(format!(
                "schema-version {other:?} is not supported (0.1 and 0.2 are)"
            )))
        }
    };
    let filter = match (include, exclude) {
        (Some(_), Some(_)) => {
            return Err(project_error(
                "`include` and `exclude` cannot both be given",
            ))
        }
        (Some(patterns), None) => Some(SourceFilter {
            include: true,
            patterns: SlugIgnore::parse(&patterns.join("\n")),
        }),
        (None, Some(patterns)) => Some(SourceFilter {
            include: false,
            patterns: SlugIgnore::parse(&patterns.join("\n")),
        }),
        (None, None) => None,
    };
    Ok(Project {
        buildpacks: refs,
        filter,
    })
}

fn project_buildpack(raw: &RawRef) -> Result<ProjectBuildpack, BuildError> {
    let name = raw.id.as_deref().unwrap_or("(no id)");
    if raw.script.is_some() {
        return Err(project_error(format!(
            "buildpack {name}: inline `script` buildpacks are not supported; use a uri"
        )));
    }
    let Some(uri) = &raw.uri else {
        return Err(project_error(format!(
            "buildpack {name} has no uri; this builder has no buildpack registry, so give \
             each buildpack a uri (a URL, or a path to it in the app)"
        )));
    };
    let lower = uri.to_ascii_lowercase();
    let is_url = lower.contains("://") || (uri.contains('@') && uri.contains(':'));
    if is_url {
        if lower.starts_with("docker://") || lower.starts_with("urn:") {
            return Err(project_error(format!(
                "buildpack {name}: {uri:?} names an image; give a git or tarball URL or a path"
            )));
        }
        return Ok(ProjectBuildpack::Url(BuildpackUrl::parse(uri)?));
    }
    relative_path(uri)
        .map(ProjectBuildpack::Path)
        .ok_or_else(|| {
            project_error(format!(
                "buildpack {name}: uri {uri:?} must be a URL or a relative path inside the app"
            ))
        })
}

/// `./buildpacks/hello/` → `buildpacks/hello`; `None` for anything that leaves the app.
fn relative_path(text: &str) -> Option<String> {
    let path = Path::new(text);
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Pipeline {
    /// Decides whether this is a CNB build: the buildpacks listed by `BUILDPACK_URL` or
    /// `.buildpacks` (already fetched), else those of `project.toml`. Returns the
    /// buildpacks to put in the container and, for CNBs, what the build needs besides.
    pub(super) async fn select_cnb(
        &self,
        push: &Push,
        listed: Option<Vec<FetchedBuildpack>>,
        fetcher: &Fetcher,
        workspace: &Workspace,
        out: &Output,
    ) -> Result<(Option<Vec<FetchedBuildpack>>, Option<CnbBuild>), BuildError> {
        let project = match push
            .source
            .read_file(&push.commit, PROJECT_FILE, MAX_PROJECT_FILE)
            .await?
        {
            Some(text) => parse_project(&String::from_utf8_lossy(&text))?,
            None => Project::default(),
        };
        let buildpacks = match listed {
            Some(listed) => listed,
            None if !project.buildpacks.is_empty() => {
                self.fetch_project_buildpacks(push, &project.buildpacks()?, fetcher, workspace, out)
                    .await?
            }
            None => return Ok((None, None)),
        };
        let is_cnb =
            |bp: &FetchedBuildpack| bp.dir.join(deis_cnb::descriptor::DESCRIPTOR).is_file();
        let (cnbs, classic): (Vec<&FetchedBuildpack>, Vec<&FetchedBuildpack>) =
            buildpacks.iter().partition(|bp| is_cnb(bp));
        if cnbs.is_empty() {
            return Ok((Some(buildpacks), None));
        }
        if !classic.is_empty() {
            let names = |list: &[&FetchedBuildpack]| {
                list.iter()
                    .map(|bp| bp.version.clone())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(BuildError::Plan(format!(
                "cannot mix classic buildpacks ({}: bin/compile) and Cloud Native Buildpacks \
                 ({}: buildpack.toml) in one build; use one kind",
                names(&classic),
                names(&cnbs)
            )));
        }
        let driver = self.settings.cnb_driver.clone().ok_or_else(|| {
            BuildError::Plan(
                "this app uses Cloud Native Buildpacks, but this builder has no CNB driver \
                 (--cnb-driver)"
                    .to_owned(),
            )
        })?;
        out.step("Building with Cloud Native Buildpacks").await;
        Ok((
            Some(buildpacks),
            Some(CnbBuild {
                driver,
                filter: project.filter.map(Arc::new),
            }),
        ))
    }

    async fn fetch_project_buildpacks(
        &self,
        push: &Push,
        buildpacks: &[ProjectBuildpack],
        fetcher: &Fetcher,
        workspace: &Workspace,
        out: &Output,
    ) -> Result<Vec<FetchedBuildpack>, BuildError> {
        let mut fetched = Vec::with_capacity(buildpacks.len());
        for (index, buildpack) in buildpacks.iter().enumerate() {
            match buildpack {
                ProjectBuildpack::Url(url) => {
                    out.line(format!("=====> Downloading Buildpack: {url}"))
                        .await;
                    fetched.push(fetcher.fetch(url, index, workspace).await?);
                }
                ProjectBuildpack::Path(path) => {
                    out.line(format!("=====> Using Buildpack: {path} (from the app)"))
                        .await;
                    let short = directory_name(path.rsplit('/').next().unwrap_or_default());
                    let name = format!("{:02}-{short}", index + 1);
                    let dest = workspace.path().join("buildpacks").join(&name);
                    self.extract_source_dir(push, path, &name, &dest).await?;
                    fetched.push(FetchedBuildpack {
                        name,
                        dir: dest,
                        version: path.clone(),
                    });
                }
            }
        }
        Ok(fetched)
    }

    /// Unpacks the directory `path` of the pushed commit to `dest` on this host, under the
    /// budget of a fetched buildpack tarball (the slug unpacker's checks).
    async fn extract_source_dir(
        &self,
        push: &Push,
        path: &str,
        name: &str,
        dest: &Path,
    ) -> Result<(), BuildError> {
        let is_dir = push
            .source
            .has_file(&push.commit, &format!("{path}/"))
            .await?;
        if !is_dir {
            return Err(project_error(format!(
                "buildpack path {path:?} is not a directory of the pushed commit"
            )));
        }
        let archive = push.source.archive_dir(&push.commit, path)?;
        let reader = SyncIoBridge::new(StreamReader::new(archive));
        let options = UnpackOptions {
            app_path: format!("{CONTAINER_BUILDPACKS_DIR}/{name}"),
            max_total_bytes: self.settings.buildpack_max_bytes,
            max_entries: BUILDPACK_MAX_ENTRIES,
            max_depth: BUILDPACK_MAX_DEPTH,
        };
        let dest = dest.to_owned();
        let unpacked =
            tokio::task::spawn_blocking(move || deis_slug::unpack_tar(reader, &dest, &options))
                .await
                .map_err(|e| {
                    std::io::Error::other(format!("unpacking a buildpack crashed: {e}"))
                })?;
        unpacked.map_err(|error| BuildError::Fetch(unpack_refusal(path, error)))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_descriptors_of_both_schemas() {
        let v1 = parse_project(
            "[project]\nid = \"x\"\n[build]\nexclude = [\"docs/\", \"*.md\"]\n\
             [[build.buildpacks]]\nuri = \"./buildpacks/hello\"\n\
             [[build.buildpacks]]\nid = \"b\"\nuri = \"https://example.com/b.tgz\"\n",
        )
        .unwrap();
        let buildpacks = v1.buildpacks().unwrap();
        assert_eq!(buildpacks.len(), 2);
        assert!(matches!(&buildpacks[0], ProjectBuildpack::Path(p) if p == "buildpacks/hello"));
        let filter = v1.filter.unwrap();
        assert!(!filter.keeps("docs", true));
        assert!(!filter.keeps("README.md", false));
        assert!(filter.keeps("app.py", false));

        let v2 = parse_project(
            "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\ninclude = [\"src/\", \"Procfile\"]\n\
             [[io.buildpacks.group]]\nuri = \"bp\"\n",
        )
        .unwrap();
        let filter = v2.filter.unwrap();
        assert!(filter.keeps("src/main.py", false));
        assert!(filter.keeps("other", true));
        assert!(!filter.keeps("other/x", false));
        assert!(filter.keeps("Procfile", false));
    }

    #[test]
    fn buildpack_entries_are_checked_only_when_used() {
        // A descriptor written for a platform with a registry: ids without uris. With
        // BUILDPACK_URL or .buildpacks the entries are not used, and only its filter counts.
        let project = parse_project(
            "[_]\nschema-version = \"0.2\"\n[io.buildpacks]\nexclude = [\"docs/\"]\n\
             [[io.buildpacks.group]]\nid = \"heroku/nodejs\"\n",
        )
        .unwrap();
        assert!(!project.filter.unwrap().keeps("docs", true));
        let project = parse_project("[[build.buildpacks]]\nid = \"heroku/nodejs\"\n").unwrap();
        let error = project.buildpacks().err().unwrap().to_string();
        assert!(
            error.contains("buildpack heroku/nodejs has no uri"),
            "{error}"
        );
    }

    #[test]
    fn bad_project_descriptors_say_what_is_wrong() {
        for (text, expected) in [
            (
                "[[build.buildpacks]]\nuri = \"../outside\"\n",
                "must be a URL or a relative path inside the app",
            ),
            (
                "[[build.buildpacks]]\nuri = \"/etc\"\n",
                "must be a URL or a relative path inside the app",
            ),
            (
                "[[build.buildpacks]]\nid = \"heroku/nodejs\"\n",
                "buildpack heroku/nodejs has no uri",
            ),
            (
                "[_]\nschema-version = \"0.3\"\n",
                "schema-version \"0.3\" is not supported",
            ),
            (
                "[build]\ninclude = [\"a\"]\nexclude = [\"b\"]\n",
                "cannot both be given",
            ),
            ("[build\n", "project.toml: invalid TOML at line 1"),
        ] {
            let error = parse_project(text)
                .and_then(|project| project.buildpacks())
                .err()
                .unwrap_or_else(|| panic!("{text:?} was accepted"))
                .to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(error.starts_with("project.toml: "), "{error}");
        }
    }
}
