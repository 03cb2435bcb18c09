//! Git submodules of a pushed commit. Heroku checks them out; the Deis builder lost them
//! (`git archive` leaves an empty directory). Each submodule `.gitmodules` lists is fetched
//! on the builder host the way buildpacks are (network transports only, the app's
//! `SSH_KEY`, `--buildpack-fetch-timeout` each) at the commit the push pins it to, and its
//! files join the source the build sees. Nested submodules are not fetched.

use std::path::PathBuf;

use crate::push::Output;
use crate::source::Source;
use deis_types::names::CommitId;

use super::fetch::{BuildpackUrl, Fetcher, UrlKind, Workspace};
use super::BuildError;

/// Largest `.gitmodules` read from a push.
pub const MAX_GITMODULES_BYTES: usize = 64 * 1024;
/// Most submodules one app may have.
const MAX_SUBMODULES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SubmoduleError {
    #[error(".gitmodules line {line}: {problem}")]
    Syntax { line: usize, problem: String },
    #[error(".gitmodules lists more than {MAX_SUBMODULES} submodules")]
    TooMany,
    #[error("submodule {name}: {problem}")]
    Invalid { name: String, problem: String },
    #[error("cannot fetch submodule {path} from {url}: {detail}")]
    Fetch {
        path: String,
        url: String,
        detail: String,
    },
}

/// One `[submodule "name"]` section with a path and a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    pub name: String,
    pub path: String,
    pub url: String,
}

/// A submodule checked out on the host, ready to go into the build input.
#[derive(Debug, Clone)]
pub struct FetchedSubmodule {
    /// Where it goes, relative to the app root.
    pub path: String,
    /// Its checkout on the host (`.git` is left out when copied).
    pub dir: PathBuf,
}

/// Reads `.gitmodules` as git does: `[submodule "name"]` sections of `key = value` lines;
/// keys other than `path` and `url` are ignored, as are sections without both.
pub fn parse_gitmodules(text: &str) -> Result<Vec<Declared>, SubmoduleError> {
    struct Section {
        name: String,
        path: Option<String>,
        url: Option<String>,
    }
    let mut sections: Vec<Section> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let syntax = |problem: &str| SubmoduleError::Syntax {
            line: index + 1,
            problem: problem.to_owned(),
        };
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(header) = line.strip_prefix('[') {
            let header = header
                .strip_suffix(']')
                .ok_or_else(|| syntax("a section header must end with ]"))?;
            let (kind, name) = header
                .split_once(char::is_whitespace)
                .unwrap_or((header, ""));
            let name = name.trim().trim_matches('"').to_owned();
            if kind.eq_ignore_ascii_case("submodule") {
                if name.is_empty() {
                    return Err(syntax("a submodule section needs a name"));
                }
                if sections.len() == MAX_SUBMODULES {
                    return Err(SubmoduleError::TooMany);
                }
                sections.push(Section {
                    name,
                    path: None,
                    url: None,
                });
            }
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| syntax("expected `key = value`"))?;
        let value = value.trim().trim_matches('"').to_owned();
        if let Some(section) = sections.last_mut() {
            match key.trim().to_ascii_lowercase().as_str() {
                "path" => section.path = Some(value),
                "url" => section.url = Some(value),
                _ => {}
            }
        }
    }
    sections
        .into_iter()
        .filter_map(|section| match (section.path, section.url) {
            (Some(path), Some(url)) => Some((section.name, path, url)),
            _ => None,
        })
        .map(|(name, path, url)| {
            check_path(&path).map_err(|problem| SubmoduleError::Invalid {
                name: name.clone(),
                problem,
            })?;
            Ok(Declared { name, path, url })
        })
        .collect()
}

/// A submodule path is where files land in `/app`: relative, inside the app, no `.git`.
fn check_path(path: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "path {:?} {why}",
            deis_types::names::printable(path)
        ))
    };
    if path.is_empty() || path.len() > 1024 || path.chars().any(char::is_control) {
        return bad("is empty, too long or has control characters");
    }
    if path.starts_with('/') || path.starts_with('-') {
        return bad("must be relative to the app root");
    }
    for part in path.split('/') {
        if matches!(part, "" | "." | "..") || part.eq_ignore_ascii_case(".git") {
            return bad("must stay inside the app (no empty, `.`, `..` or `.git` parts)");
        }
    }
    Ok(())
}

/// Fetches every submodule of `commit`, saying so as it goes. A submodule that cannot be
/// fetched rejects the push, naming it.
pub async fn fetch_all(
    source: &Source,
    commit: &CommitId,
    fetcher: &Fetcher,
    workspace: &Workspace,
    out: &Output,
) -> Result<Vec<FetchedSubmodule>, BuildError> {
    let Some(text) = source
        .read_file(commit, ".gitmodules", MAX_GITMODULES_BYTES)
        .await?
    else {
        return Ok(Vec::new());
    };
    let declared = parse_gitmodules(&String::from_utf8_lossy(&text))?;
    let mut fetched = Vec::new();
    for (index, submodule) in declared.iter().enumerate() {
        // As git: a section whose path is no submodule in this commit is ignored.
        let Some(pinned) = source.gitlink(commit, &submodule.path).await? else {
            continue;
        };
        if fetched.is_empty() {
            out.step("Fetching git submodules").await;
        }
        let fail = |url: String, detail: String| SubmoduleError::Fetch {
            path: submodule.path.clone(),
            url,
            detail,
        };
        let url = match BuildpackUrl::parse(&format!("{}#{}", submodule.url, pinned)) {
            Ok(url) if url.kind == UrlKind::Git => url,
            Ok(url) => {
                return Err(fail(
                    url.shown(),
                    "a submodule URL must name a git repository".into(),
                )
                .into())
            }
            Err(error) => {
                let shown =
                    deis_types::names::printable(&super::fetch::mask_credentials(&submodule.url));
                let detail = if submodule.url.starts_with("./") || submodule.url.starts_with("../")
                {
                    "relative URLs name the app's own remote, which the builder does not fetch from; use an absolute https:// or ssh:// URL".to_owned()
                } else {
                    error.detail()
                };
                return Err(fail(shown, detail).into());
            }
        };
        let dest = workspace
            .path()
            .join("submodules")
            .join(format!("{index:02}"));
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        // Asked for by its full commit id, which the fetcher checks it got.
        fetcher
            .fetch_repo(&url, &dest, workspace)
            .await
            .map_err(|error| fail(url.shown(), error.detail()))?;
        out.detail(format!(
            "{} at {} from {}",
            submodule.path,
            pinned.short(),
            super::fetch::mask_credentials(&submodule.url)
        ))
        .await;
        fetched.push(FetchedSubmodule {
            path: submodule.path.clone(),
            dir: dest,
        });
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitmodules_are_read_like_git() {
        let text = "# ours\n[submodule \"lib\"]\n\tpath = vendor/lib\n\turl = https://example.com/lib.git\n\tbranch = main\n\
                    [core]\n\tbare = false\n[submodule \"no-url\"]\n\tpath = x\n";
        assert_eq!(
            parse_gitmodules(text).unwrap(),
            vec![Declared {
                name: "lib".into(),
                path: "vendor/lib".into(),
                url: "https://example.com/lib.git".into(),
            }]
        );
    }

    #[test]
    fn paths_outside_the_app_are_refused() {
        for path in ["../up", "/abs", "a/../b", "a/.git", ".git", "a//b", "-o"] {
            let text = format!("[submodule \"s\"]\npath = {path}\nurl = https://h/r.git\n");
            let err = parse_gitmodules(&text).unwrap_err().to_string();
            assert!(err.starts_with("submodule s: path"), "{path}: {err}");
        }
        let err = parse_gitmodules("[submodule \"s\"\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, ".gitmodules line 1: a section header must end with ]");
        let many: String = (0..=MAX_SUBMODULES)
            .map(|i| format!("[submodule \"s{i}\"]\npath = p{i}\nurl = https://h/r.git\n"))
            .collect();
        assert!(matches!(
            parse_gitmodules(&many),
            Err(SubmoduleError::TooMany)
        ));
    }
}
