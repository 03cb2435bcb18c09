//! Buildpacks named by URL (`BUILDPACK_URL`, `.buildpacks`), fetched on the builder host so
//! the build container never needs a network: git repositories through the `git` CLI,
//! tarballs through `curl`. Both run with a cleared environment, a timeout, and only
//! network protocols allowed (no `file://`, local paths or `ext::`, which would let a user
//! with push rights read the builder's own disk or run commands on it).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use deis_slug::{UnpackError, UnpackOptions};

/// Largest tarball buildpack we download.
const MAX_TARBALL_BYTES: u64 = 256 << 20;
/// Most entries a tarball buildpack may hold (the directories they need count too): a
/// small gzip must not fill the data dir with inodes. Real buildpacks have a few thousand.
pub const BUILDPACK_MAX_ENTRIES: u64 = 100_000;
/// Deepest directory nesting in a tarball buildpack.
pub const BUILDPACK_MAX_DEPTH: usize = 64;
/// Where fetched buildpacks lie in the build container (see `buildpacks/README.md`): a
/// tarball's absolute links may point only into its own directory there.
pub(super) const CONTAINER_BUILDPACKS_DIR: &str = "/build/buildpacks";
/// Most buildpacks a `.buildpacks` file may list.
pub const MAX_BUILDPACKS: usize = 20;
/// Longest stderr excerpt of a failed git/curl quoted to the developer.
const MAX_ERROR_CHARS: usize = 400;
/// Proxy settings of the builder's environment, passed on to git and curl.
const PROXY_VARIABLES: [&str; 6] = [
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];
/// Transports git may use: everything it supports over the network, nothing local.
const GIT_ALLOWED_PROTOCOLS: &str = "https:http:ssh:git";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid buildpack URL {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
    #[error(".buildpacks lists {0} buildpacks; at most {MAX_BUILDPACKS} are supported")]
    TooMany(usize),
    #[error("cannot fetch buildpack {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("buildpack {url} has no branch, tag or commit {reference:?}")]
    BadRef { url: String, reference: String },
    #[error("fetching buildpack {url} took longer than {seconds}s and was stopped")]
    Timeout { url: String, seconds: u64 },
    #[error("{url} served commit {served}, not the commit {wanted} it was asked for")]
    WrongCommit {
        url: String,
        wanted: String,
        served: String,
    },
    #[error("buildpack {url} is not a buildpack: {reason}")]
    NotABuildpack { url: String, reason: String },
    #[error("buildpack {url} was refused: {reason}")]
    OverLimit { url: String, reason: String },
    #[error("cannot fetch buildpack {url}: {error}")]
    Io { url: String, error: std::io::Error },
}

impl FetchError {
    /// What went wrong, without naming the URL (for messages that name it themselves).
    pub fn detail(&self) -> String {
        match self {
            FetchError::BadUrl { reason, .. } => (*reason).to_owned(),
            FetchError::TooMany(count) => format!("{count} entries"),
            FetchError::Unreachable { detail, .. } => detail.clone(),
            FetchError::BadRef { reference, .. } => format!("it has no commit {reference}"),
            FetchError::Timeout { seconds, .. } => {
                format!("fetching took longer than {seconds}s and was stopped")
            }
            FetchError::WrongCommit { wanted, served, .. } => {
                format!("it served commit {served}, not the commit {wanted} it was asked for")
            }
            FetchError::NotABuildpack { reason, .. } | FetchError::OverLimit { reason, .. } => {
                reason.clone()
            }
            FetchError::Io { error, .. } => error.to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlKind {
    Git,
    Tarball,
}

/// A parsed `url#ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildpackUrl {
    pub url: String,
    pub reference: Option<String>,
    pub kind: UrlKind,
}

impl BuildpackUrl {
    pub fn parse(text: &str) -> Result<BuildpackUrl, FetchError> {
        let text = text.trim();
        // Even a malformed URL may carry a token: never echo it.
        let bad = |reason| FetchError::BadUrl {
            url: deis_types::names::printable(&mask_credentials(text)),
            reason,
        };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.len() > 2048 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(
                "it is too long or contains spaces or control characters",
            ));
        }
        let (url, reference) = match text.split_once('#') {
            Some((url, reference)) => (url, Some(reference)),
            None => (text, None),
        };
        if let Some(reference) = reference {
            let valid = !reference.is_empty()
                && !reference.starts_with('-')
                && !reference.contains("..")
                && reference
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/-+".contains(c));
            if !valid {
                return Err(bad(
                    "the part after # must be a branch, tag or commit (letters, digits, . _ / - +)",
                ));
            }
        }
        let lower = url.to_ascii_lowercase();
        let path = lower.split(['?']).next().unwrap_or_default();
        let is_http = lower.starts_with("https://") || lower.starts_with("http://");
        let kind = if is_http && (path.ends_with(".tgz") || path.ends_with(".tar.gz")) {
            UrlKind::Tarball
        } else if is_http
            || lower.starts_with("ssh://")
            || lower.starts_with("git://")
            || is_scp_like(url)
        {
            UrlKind::Git
        } else {
            return Err(bad(
                "use an https://, http://, ssh:// or git:// URL, or user@host:path",
            ));
        };
        let host_part = url.split_once("://").map_or(url, |(_, rest)| rest);
        if host_part.is_empty() || host_part.starts_with('/') {
            return Err(bad("it names no host"));
        }
        if kind == UrlKind::Tarball && reference.is_some() {
            return Err(bad("a tarball URL takes no #ref"));
        }
        Ok(BuildpackUrl {
            url: url.to_owned(),
            reference: reference.map(str::to_owned),
            kind,
        })
    }

    /// The URL and ref for messages. HTTP user info (`user:password@`, `token@`) is a
    /// credential and shows as `***@`; an ssh user name (`git@`) is not.
    pub fn shown(&self) -> String {
        let url = mask_credentials(&self.url);
        match &self.reference {
            Some(reference) => format!("{url}#{reference}"),
            None => url,
        }
    }

    /// A short directory-friendly name: the last path segment without `.git`/`.tgz`.
    pub fn short_name(&self) -> String {
        let path = self.url.split(['?', '#']).next().unwrap_or_default();
        let last = path
            .trim_end_matches('/')
            .rsplit(['/', ':'])
            .next()
            .unwrap_or_default();
        let stem = [".git", ".tgz", ".tar.gz"]
            .iter()
            .find_map(|ext| last.strip_suffix(ext))
            .unwrap_or(last);
        directory_name(stem)
    }
}

impl std::fmt::Display for BuildpackUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

/// A buildpack's directory-friendly name: lowercase letters and digits, `-` for the rest,
/// at most 40 characters; `buildpack` when nothing is left.
pub(super) fn directory_name(stem: &str) -> String {
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    if name.trim_matches('-').is_empty() {
        "buildpack".to_owned()
    } else {
        name
    }
}

/// 40 hex digits: a full SHA-1 commit id.
fn is_full_commit_id(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `git@github.com:org/repo.git`: a user, a host, a colon and a path.
fn is_scp_like(url: &str) -> bool {
    let Some((user_host, path)) = url.split_once(':') else {
        return false;
    };
    let Some((user, host)) = user_host.split_once('@') else {
        return false;
    };
    !user.is_empty()
        && !user.starts_with('-')
        && !host.is_empty()
        && !host.contains('/')
        && !path.is_empty()
        && !path.starts_with("//")
}

/// The lines of a `.buildpacks` file: blank lines and `#` comments are skipped.
pub fn parse_buildpacks_file(text: &str) -> Result<Vec<BuildpackUrl>, FetchError> {
    let urls = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(BuildpackUrl::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if urls.len() > MAX_BUILDPACKS {
        return Err(FetchError::TooMany(urls.len()));
    }
    Ok(urls)
}

/// A buildpack ready to go into the input archive.
#[derive(Debug, Clone)]
pub struct FetchedBuildpack {
    /// Directory name in the container, e.g. `01-python`: the driver runs them in this order.
    pub name: String,
    /// Its root on the host (holds `bin/compile`).
    pub dir: PathBuf,
    /// What was fetched: the commit for git, the URL for tarballs.
    pub version: String,
}

/// A private temporary directory for one push (fetched buildpacks, the cache archive),
/// removed when dropped.
#[derive(Debug)]
pub struct Workspace {
    path: PathBuf,
}

impl Workspace {
    /// A new directory under `parent` (created if missing).
    pub fn create(parent: &Path, push_id: &str) -> std::io::Result<Workspace> {
        use std::os::unix::fs::DirBuilderExt;
        let suffix: u64 = rand::random();
        let safe_id: String = push_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        let path = parent.join(format!("push-{safe_id}-{suffix:016x}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(parent)?;
        // Not recursive: the push's own directory must be new.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Workspace { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::warn!(%error, dir = %path.display(), "cannot remove push workspace");
            }
        };
        // It may hold a large cache tarball: keep the deletion off the async workers.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// Fetches buildpacks with a per-buildpack time limit.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub timeout: Duration,
    /// Most a tarball buildpack may unpack to (`--buildpack-max-size`).
    pub max_unpacked_bytes: u64,
    /// Private key (OpenSSH/PEM text) from the app's `SSH_KEY`, for private git buildpacks.
    pub ssh_key: Option<String>,
}

impl Fetcher {
    /// The fetcher of one push: the builder's limits, the app's `SSH_KEY` (decoded).
    pub fn new(settings: &crate::settings::BuildSettings, ssh_key: Option<String>) -> Fetcher {
        Fetcher {
            timeout: settings.fetch_timeout,
            max_unpacked_bytes: settings.buildpack_max_bytes,
            ssh_key,
        }
    }

    /// Fetches `url` into `workspace/<index>-<name>` and checks it is a buildpack.
    pub async fn fetch(
        &self,
        url: &BuildpackUrl,
        index: usize,
        workspace: &Workspace,
    ) -> Result<FetchedBuildpack, FetchError> {
        let name = format!("{:02}-{}", index + 1, url.short_name());
        let dest = workspace.path().join("buildpacks").join(&name);
        let io_error = |error| FetchError::Io {
            url: url.shown(),
            error,
        };
        tokio::fs::create_dir_all(workspace.path().join("buildpacks"))
            .await
            .map_err(io_error)?;
        let (root, version) = match url.kind {
            UrlKind::Git => {
                let commit = self.fetch_git(url, &dest, workspace).await?;
                (dest, commit)
            }
            UrlKind::Tarball => {
                let options = UnpackOptions {
                    app_path: format!("{CONTAINER_BUILDPACKS_DIR}/{name}"),
                    max_total_bytes: self.max_unpacked_bytes,
                    max_entries: BUILDPACK_MAX_ENTRIES,
                    max_depth: BUILDPACK_MAX_DEPTH,
                };
                let root = self.fetch_tarball(url, &dest, workspace, options).await?;
                (root, url.shown())
            }
        };
        // A classic buildpack has bin/compile, a Cloud Native Buildpack buildpack.toml.
        let exists =
            |path: PathBuf| async move { tokio::fs::try_exists(path).await.unwrap_or(false) };
        if !exists(root.join("bin/compile")).await && !exists(root.join("buildpack.toml")).await {
            return Err(FetchError::NotABuildpack {
                url: url.shown(),
                reason: "it has neither bin/compile nor buildpack.toml".to_owned(),
            });
        }
        Ok(FetchedBuildpack {
            name,
            dir: root,
            version,
        })
    }

    /// A git repository (a submodule) at `url`'s ref into `dest`; returns the commit.
    pub async fn fetch_repo(
        &self,
        url: &BuildpackUrl,
        dest: &Path,
        workspace: &Workspace,
    ) -> Result<String, FetchError> {
        self.fetch_git(url, dest, workspace).await
    }

    /// A shallow clone of the ref (or default branch); when the server cannot do shallow
    /// clones of that ref (a commit id, or a dumb HTTP server), a full clone and a checkout.
    async fn fetch_git(
        &self,
        url: &BuildpackUrl,
        dest: &Path,
        workspace: &Workspace,
    ) -> Result<String, FetchError> {
        let dest_arg = dest.to_string_lossy().into_owned();
        let mut shallow = vec!["clone", "--quiet", "--depth", "1"];
        if let Some(reference) = &url.reference {
            shallow.extend(["--branch", reference]);
        }
        shallow.extend(["--", &url.url, &dest_arg]);
        let shallow_result = self.git(url, &shallow, None, workspace).await;
        match shallow_result {
            Ok(_) => {}
            Err(FetchError::Timeout { .. }) => return shallow_result.map(|_| String::new()),
            Err(error) => {
                tracing::debug!(%error, "shallow clone failed; trying a full clone");
                let _ = tokio::fs::remove_dir_all(dest).await;
                let full = [
                    "clone",
                    "--quiet",
                    "--no-checkout",
                    "--",
                    &url.url,
                    &dest_arg,
                ];
                self.git(url, &full, None, workspace).await?;
                let Some(reference) = &url.reference else {
                    self.git(url, &["checkout", "--quiet"], Some(dest), workspace)
                        .await?;
                    return self.head(url, dest, workspace).await;
                };
                let commit = self.resolve(url, reference, dest, workspace).await?;
                self.git(
                    url,
                    &["checkout", "--quiet", "--detach", &commit],
                    Some(dest),
                    workspace,
                )
                .await?;
            }
        }
        let head = self.head(url, dest, workspace).await?;
        // A full commit id is an exact request: a branch or tag named like it must not put
        // other code into the build (the only anchor a submodule pin has).
        if let Some(wanted) = url.reference.as_deref().filter(|r| is_full_commit_id(r)) {
            if !head.eq_ignore_ascii_case(wanted) {
                return Err(FetchError::WrongCommit {
                    url: url.shown(),
                    wanted: wanted.to_owned(),
                    served: head,
                });
            }
        }
        Ok(head)
    }

    async fn head(
        &self,
        url: &BuildpackUrl,
        dest: &Path,
        workspace: &Workspace,
    ) -> Result<String, FetchError> {
        self.git(url, &["rev-parse", "HEAD"], Some(dest), workspace)
            .await
    }

    /// A branch, tag or (abbreviated) commit of a full clone, as a commit id.
    async fn resolve(
        &self,
        url: &BuildpackUrl,
        reference: &str,
        dest: &Path,
        workspace: &Workspace,
    ) -> Result<String, FetchError> {
        for candidate in [
            format!("refs/remotes/origin/{reference}^{{commit}}"),
            format!("refs/tags/{reference}^{{commit}}"),
            format!("{reference}^{{commit}}"),
        ] {
            let args = ["rev-parse", "--verify", "--quiet", candidate.as_str()];
            if let Ok(commit) = self.git(url, &args, Some(dest), workspace).await {
                if !commit.is_empty() {
                    return Ok(commit);
                }
            }
        }
        Err(FetchError::BadRef {
            url: url.shown(),
            reference: reference.to_owned(),
        })
    }

    /// Runs git with a clean environment; returns its trimmed stdout.
    async fn git(
        &self,
        url: &BuildpackUrl,
        args: &[&str],
        dir: Option<&Path>,
        workspace: &Workspace,
    ) -> Result<String, FetchError> {
        let home = workspace.path().join("home");
        tokio::fs::create_dir_all(&home)
            .await
            .map_err(|error| FetchError::Io {
                url: url.shown(),
                error,
            })?;
        let mut command = self.limited("git");
        command
            .args(args)
            .env("HOME", &home)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", GIT_ALLOWED_PROTOCOLS)
            .env("GIT_SSH_COMMAND", self.ssh_command(workspace).await?);
        if let Some(dir) = dir {
            command.current_dir(dir);
        }
        self.run(url, command).await
    }

    /// ssh for git: never the builder's own keys or known_hosts, never a prompt; the app's
    /// `SSH_KEY` when it has one.
    async fn ssh_command(&self, workspace: &Workspace) -> Result<String, FetchError> {
        let ssh_dir = workspace.path().join("ssh");
        let known_hosts = ssh_dir.join("known_hosts");
        let mut command = format!(
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile='{}'",
            known_hosts.display()
        );
        if let Some(key) = &self.ssh_key {
            let key_path = ssh_dir.join("id_key");
            if !tokio::fs::try_exists(&key_path).await.unwrap_or(false) {
                write_private(&ssh_dir, &key_path, key).map_err(|error| FetchError::Io {
                    url: "(SSH_KEY)".to_owned(),
                    error,
                })?;
            }
            command.push_str(&format!(
                " -o IdentitiesOnly=yes -i '{}'",
                key_path.display()
            ));
        } else {
            std::fs::create_dir_all(&ssh_dir).map_err(|error| FetchError::Io {
                url: "(ssh)".to_owned(),
                error,
            })?;
        }
        Ok(command)
    }

    /// Downloads with curl (http/https only, size-capped) and unpacks safely, within
    /// `options`' limits.
    async fn fetch_tarball(
        &self,
        url: &BuildpackUrl,
        dest: &Path,
        workspace: &Workspace,
        options: UnpackOptions,
    ) -> Result<PathBuf, FetchError> {
        let archive = dest.with_extension("tgz");
        let mut command = self.limited("curl");
        command
            .args([
                "--fail",
                "--silent",
                "--show-error",
                "--location",
                "--proto",
                "=http,https",
                "--proto-redir",
                "=http,https",
                "--max-redirs",
                "5",
                "--max-filesize",
            ])
            .arg(MAX_TARBALL_BYTES.to_string())
            .arg("--output")
            .arg(&archive)
            .arg("--")
            .arg(&url.url)
            .env("HOME", workspace.path());
        self.run(url, command).await?;
        let unpack_into = dest.to_owned();
        let url_text = url.shown();
        tokio::task::spawn_blocking(move || {
            unpack_tarball(&archive, &unpack_into, &url_text, &options)
        })
        .await
        .map_err(|e| FetchError::Io {
            url: url.shown(),
            error: std::io::Error::other(e.to_string()),
        })?
    }

    /// A command under coreutils `timeout`, which kills the whole process group (git's
    /// helpers, ssh) when time is up; the environment holds only PATH and the operator's
    /// proxy settings.
    fn limited(&self, program: &str) -> Command {
        let mut command = Command::new("timeout");
        command
            .arg("--kill-after=5")
            .arg(self.timeout.as_secs().max(1).to_string())
            .arg(program)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for name in PROXY_VARIABLES {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        command
    }

    async fn run(&self, url: &BuildpackUrl, mut command: Command) -> Result<String, FetchError> {
        let seconds = self.timeout.as_secs().max(1);
        let timeout_error = || FetchError::Timeout {
            url: url.shown(),
            seconds,
        };
        // The outer limit only matters if `timeout` itself hangs.
        let output = tokio::time::timeout(self.timeout + Duration::from_secs(10), command.output())
            .await
            .map_err(|_| timeout_error())?
            .map_err(|error| FetchError::Io {
                url: url.shown(),
                error,
            })?;
        match output.status.code() {
            Some(0) => Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned()),
            Some(124) | Some(137) | None => Err(timeout_error()),
            Some(_) => Err(FetchError::Unreachable {
                url: url.shown(),
                detail: last_lines(&output.stderr),
            }),
        }
    }
}

fn write_private(dir: &Path, path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    if !text.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    Ok(())
}

/// The end of a tool's stderr, on one line, for an error message.
fn last_lines(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if joined.is_empty() {
        return "the transfer failed".to_owned();
    }
    let chars: Vec<char> = joined.chars().collect();
    if chars.len() > MAX_ERROR_CHARS {
        let tail: String = chars[chars.len() - MAX_ERROR_CHARS..].iter().collect();
        format!("…{tail}")
    } else {
        joined
    }
}

/// Unpacks a gzip'd tar with the slug unpacker (no `..` or absolute names, nothing written
/// through a link, links stay inside, no devices, capped headers) within `options`' size,
/// entry and depth budget; a single top-level directory (as GitHub archives have) is the
/// buildpack root. A refused tarball leaves nothing behind.
fn unpack_tarball(
    archive: &Path,
    dest: &Path,
    url: &str,
    options: &UnpackOptions,
) -> Result<PathBuf, FetchError> {
    let file = std::fs::File::open(archive).map_err(|error| FetchError::Io {
        url: url.to_owned(),
        error,
    })?;
    // Several gzip members are valid (some tools write them); the unpacker reads on.
    let gzip = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    let unpacked = deis_slug::unpack_tar(gzip, dest, options);
    let _ = std::fs::remove_file(archive);
    if let Err(error) = unpacked {
        // Not left for the workspace's removal at the end of the push: free it now.
        let _ = std::fs::remove_dir_all(dest);
        return Err(unpack_refusal(url, error));
    }
    if dest.join("bin").is_dir() {
        return Ok(dest.to_owned());
    }
    let mut entries = std::fs::read_dir(dest)
        .map_err(|error| FetchError::Io {
            url: url.to_owned(),
            error,
        })?
        .filter_map(Result::ok)
        .collect::<Vec<_>>();
    match entries.pop() {
        // file_type() does not follow a link: the root must be a real directory.
        Some(only) if entries.is_empty() && only.file_type().is_ok_and(|t| t.is_dir()) => {
            Ok(only.path())
        }
        _ => Ok(dest.to_owned()),
    }
}

/// What a refused tarball tells the developer, in a buildpack's terms (the unpacker's own
/// messages speak of slugs).
pub(super) fn unpack_refusal(url: &str, error: UnpackError) -> FetchError {
    let over = |reason: String| FetchError::OverLimit {
        url: url.to_owned(),
        reason,
    };
    let not_a_buildpack = |reason: String| FetchError::NotABuildpack {
        url: url.to_owned(),
        reason,
    };
    match error {
        UnpackError::TooLarge { limit, .. } => over(format!(
            "it unpacks to more than {}, the limit (--buildpack-max-size)",
            deis_types::units::human_size(limit)
        )),
        UnpackError::TooManyEntries { limit } => over(format!(
            "it holds more than {limit} files, links and directories, the limit"
        )),
        UnpackError::TooDeep { path, limit } => over(format!(
            "entry {path:?} is nested more than {limit} directories deep, the limit"
        )),
        UnpackError::HeadersTooLarge { limit } => over(format!(
            "its extension headers (long names, pax records) exceed {limit} bytes, the limit"
        )),
        UnpackError::Write { error, .. } => FetchError::Io {
            url: url.to_owned(),
            error,
        },
        UnpackError::Corrupt(error) => not_a_buildpack(format!("not a readable .tgz ({error})")),
        UnpackError::Empty => not_a_buildpack("the .tgz holds no entries".to_owned()),
        UnpackError::UnsafePath { path, reason } => {
            not_a_buildpack(format!("unsafe entry {path:?} in the .tgz: {reason}"))
        }
        UnpackError::ForbiddenType { path, kind } => not_a_buildpack(format!(
            "entry {path:?} is a {kind}; a buildpack may only hold files, directories and links"
        )),
        UnpackError::SymlinkEscape { path, target } => not_a_buildpack(format!(
            "symlink {path:?} -> {target:?} points outside the buildpack"
        )),
        UnpackError::BadHardLink {
            path,
            target,
            reason,
        } => not_a_buildpack(format!(
            "hard link {path:?} -> {target:?} refused: {reason}"
        )),
        UnpackError::MixedLayout { path } => not_a_buildpack(format!(
            "entry {path:?} is outside app/, but the .tgz starts with the app/ directory"
        )),
    }
}

/// HTTP user info (`user:password@`, `token@`) is a credential: it shows as `***@`. An ssh
/// user name (`git@host:…`, `ssh://git@…`) is not, and stays.
pub(super) fn mask_credentials(url: &str) -> String {
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
        deis_types::names::mask_url_credentials(url)
    } else {
        url.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn urls_and_refs() {
        let url = BuildpackUrl::parse("https://example.com/org/python.git#v1.2").unwrap();
        assert_eq!(url.url, "https://example.com/org/python.git");
        assert_eq!(url.reference.as_deref(), Some("v1.2"));
        assert_eq!(url.kind, UrlKind::Git);
        assert_eq!(url.short_name(), "python");

        let url = BuildpackUrl::parse("http://127.0.0.1:8000/bp.tar.gz").unwrap();
        assert_eq!(url.kind, UrlKind::Tarball);
        assert_eq!(url.short_name(), "bp");

        let url = BuildpackUrl::parse("https://user:token@example.com/bp.git#main").unwrap();
        assert_eq!(url.shown(), "https://***@example.com/bp.git#main");
        let url = BuildpackUrl::parse("ssh://git@example.com/bp.git").unwrap();
        assert_eq!(url.shown(), "ssh://git@example.com/bp.git");

        let url = BuildpackUrl::parse("git@github.com:org/my_pack.git").unwrap();
        assert_eq!(url.kind, UrlKind::Git);
        assert_eq!(url.short_name(), "my-pack");
        assert_eq!(url.reference, None);
    }

    #[test]
    fn local_and_odd_urls_are_refused() {
        for bad in [
            "",
            "/srv/buildpacks/python",
            "file:///etc",
            "ext::sh -c id",
            "ext::sh",
            "-upload-pack=x",
            "https://example.com/x.git#",
            "https://example.com/x.git#--upload-pack=x",
            "https://example.com/x.git#a..b",
            "https://example.com/x.tgz#main",
            "https:///nohost",
            "ftp://example.com/x.git",
        ] {
            assert!(BuildpackUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn buildpacks_file_skips_comments() {
        let urls = parse_buildpacks_file("# tools\nhttps://h/a.git#main\n\n  https://h/b.tgz  \n")
            .unwrap();
        assert_eq!(urls.len(), 2);
        assert_eq!(urls[1].kind, UrlKind::Tarball);
        let many = "https://h/a.git\n".repeat(MAX_BUILDPACKS + 1);
        assert!(matches!(
            parse_buildpacks_file(&many),
            Err(FetchError::TooMany(_))
        ));
    }

    /// A gzip'd tar of zero-filled files: `(name, size)`.
    fn tgz(dir: &Path, files: &[(String, usize)]) -> PathBuf {
        let path = dir.join("bp.tgz");
        let gzip = flate2::write::GzEncoder::new(
            std::fs::File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gzip);
        for (name, size) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(*size as u64);
            header.set_mode(0o755);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, name, std::io::repeat(0).take(*size as u64))
                .unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap();
        path
    }

    fn budget(max_total_bytes: u64, max_entries: u64) -> UnpackOptions {
        UnpackOptions {
            app_path: format!("{CONTAINER_BUILDPACKS_DIR}/01-bp"),
            max_total_bytes,
            max_entries,
            max_depth: BUILDPACK_MAX_DEPTH,
        }
    }

    const URL: &str = "https://example.com/bp.tgz";

    #[test]
    fn a_tarball_within_its_budget_unpacks_to_its_top_directory() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tgz(
            dir.path(),
            &[
                ("bp-1.0/bin/compile".into(), 10),
                ("bp-1.0/lib/x".into(), 10),
            ],
        );
        let dest = dir.path().join("01-bp");
        let root = unpack_tarball(&archive, &dest, URL, &budget(20, 10)).unwrap();
        assert_eq!(root, dest.join("bp-1.0"));
        assert!(root.join("bin/compile").is_file());
        assert!(!archive.exists(), "the download is removed once unpacked");
    }

    #[test]
    fn a_tarball_over_its_budget_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = vec![("bp-1.0/bin/compile".to_owned(), 10)];
        files.extend((0..4).map(|i| (format!("bp-1.0/zeros-{i}"), 64 << 10)));
        let too_many: Vec<(String, usize)> = (0..20).map(|i| (format!("bp-1.0/f{i}"), 1)).collect();
        let too_deep = vec![(format!("{}x", "d/".repeat(BUILDPACK_MAX_DEPTH)), 1)];
        // Few entries, but each needs directories of its own: they count too.
        let wide: Vec<(String, usize)> = (0..5)
            .map(|i| (format!("bp/{i}/a/b/c/d/e/f/g/x"), 1))
            .collect();
        let cases = [
            (
                files,
                budget(100 << 10, 100),
                "it unpacks to more than 100.0K, the limit (--buildpack-max-size)",
            ),
            (
                too_many,
                budget(1 << 20, 10),
                "it holds more than 10 files, links and directories",
            ),
            (
                too_deep,
                budget(1 << 20, 1000),
                "is nested more than 64 directories deep",
            ),
            (
                wide,
                budget(1 << 20, 20),
                "it holds more than 20 files, links and directories",
            ),
        ];
        for (files, options, expected) in cases {
            let archive = tgz(dir.path(), &files);
            let dest = dir.path().join("01-bp");
            let error = unpack_tarball(&archive, &dest, URL, &options).unwrap_err();
            assert!(matches!(error, FetchError::OverLimit { .. }), "{error}");
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("buildpack {URL} was refused: ")),
                "{message}"
            );
            assert!(message.contains(expected), "{message}");
            assert!(
                !dest.exists(),
                "{expected}: the partial unpack must be removed"
            );
            assert!(
                !archive.exists(),
                "{expected}: the download must be removed"
            );
        }
    }

    #[test]
    fn stderr_excerpts_are_short() {
        assert_eq!(last_lines(b"\nfatal: x\n"), "fatal: x");
        assert!(last_lines(&vec![b'a'; 5000]).chars().count() <= MAX_ERROR_CHARS + 1);
    }
}
