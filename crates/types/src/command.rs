//! Parsing of the command line an SSH client asks us to exec.
//!
//! Git sends `git-receive-pack '/myapp.git'` for a push and `git-upload-pack 'myapp.git'`
//! for a clone or fetch. Everything else is refused: we never run a shell.

use crate::names::{printable, AppName, NameError};

/// Longest exec request we read; a real git command is far shorter.
const MAX_COMMAND_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitService {
    /// `git push`
    ReceivePack,
    /// `git clone` / `git fetch`
    UploadPack,
}

impl GitService {
    /// The git subcommand that serves this request.
    pub fn subcommand(self) -> &'static str {
        match self {
            GitService::ReceivePack => "receive-pack",
            GitService::UploadPack => "upload-pack",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCommand {
    pub service: GitService,
    pub app: AppName,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command is too long")]
    TooLong,
    #[error("command is not valid UTF-8")]
    NotUtf8,
    #[error("command contains control characters")]
    ControlChars,
    #[error("unsupported command {0:?}: only git push and git fetch are served here")]
    Unsupported(String),
    #[error("repository argument is missing")]
    MissingRepo,
    #[error("malformed repository argument {0:?}: expected 'app.git'")]
    BadQuoting(String),
    #[error("invalid repository {repo:?}: {source}")]
    BadApp { repo: String, source: NameError },
}

pub fn parse(raw: &[u8]) -> Result<GitCommand, CommandError> {
    if raw.len() > MAX_COMMAND_LEN {
        return Err(CommandError::TooLong);
    }
    let text = std::str::from_utf8(raw).map_err(|_| CommandError::NotUtf8)?;
    if text.chars().any(char::is_control) {
        return Err(CommandError::ControlChars);
    }
    let (service, arg) = split_verb(text)?;
    let repo = unquote(arg)?;
    let name = repo.strip_prefix('/').unwrap_or(repo);
    let name = name.strip_suffix(".git").unwrap_or(name);
    let app = AppName::parse(name).map_err(|source| CommandError::BadApp {
        repo: printable(repo),
        source,
    })?;
    Ok(GitCommand { service, app })
}

fn split_verb(text: &str) -> Result<(GitService, &str), CommandError> {
    const VERBS: [(&str, GitService); 4] = [
        ("git-receive-pack", GitService::ReceivePack),
        ("git receive-pack", GitService::ReceivePack),
        ("git-upload-pack", GitService::UploadPack),
        ("git upload-pack", GitService::UploadPack),
    ];
    for (verb, service) in VERBS {
        if let Some(rest) = text.strip_prefix(verb) {
            if rest.is_empty() {
                return Err(CommandError::MissingRepo);
            }
            if let Some(arg) = rest.strip_prefix(' ') {
                if arg.is_empty() {
                    return Err(CommandError::MissingRepo);
                }
                return Ok((service, arg));
            }
        }
    }
    let verb = text.split(' ').next().unwrap_or_default();
    Err(CommandError::Unsupported(printable(verb)))
}

/// Accepts `app`, `'app'` or `"app"`; anything else with quotes, backslashes or spaces is refused
/// rather than cleaned up (the old builder stripped characters, which hid mistakes and attacks).
fn unquote(arg: &str) -> Result<&str, CommandError> {
    let inner = ['\'', '"']
        .iter()
        .find_map(|q| arg.strip_prefix(*q).and_then(|a| a.strip_suffix(*q)))
        .unwrap_or(arg);
    let clean = !inner
        .chars()
        .any(|c| matches!(c, '\'' | '"' | '\\' | ' ' | '`' | '$'));
    if clean && !inner.is_empty() {
        Ok(inner)
    } else {
        Err(CommandError::BadQuoting(printable(arg)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(cmd: &str) -> Result<(GitService, String), CommandError> {
        parse(cmd.as_bytes()).map(|c| (c.service, c.app.to_string()))
    }

    #[test]
    fn accepts_what_git_sends() {
        use GitService::*;
        for (cmd, service) in [
            ("git-receive-pack '/myapp.git'", ReceivePack),
            ("git-receive-pack 'myapp.git'", ReceivePack),
            ("git-receive-pack myapp", ReceivePack),
            ("git-receive-pack \"/myapp.git\"", ReceivePack),
            ("git receive-pack '/myapp.git'", ReceivePack),
            ("git-upload-pack 'myapp.git'", UploadPack),
            ("git upload-pack '/myapp'", UploadPack),
        ] {
            assert_eq!(app(cmd).unwrap(), (service, "myapp".to_owned()), "{cmd}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        let long = format!("git-receive-pack '{}.git'", "a".repeat(64));
        let huge = format!("git-receive-pack '{}'", "a".repeat(600));
        for cmd in [
            "",
            "ls",
            "bash",
            "sh -c 'id'",
            "git-receive-pack",
            "git-receive-pack ",
            "git-receive-pack '../etc.git'",
            "git-receive-pack '/../../etc/passwd'",
            "git-receive-pack 'a/b.git'",
            "git-receive-pack 'app.git'; rm -rf /",
            "git-receive-pack 'app`id`.git'",
            "git-receive-pack '$(id).git'",
            "git-receive-pack 'app.git",
            "git-receive-pack app.git'",
            "git-receive-pack ''",
            "git-receive-pack 'App.git'",
            "git-receive-pack 'my_app.git'",
            "git-receive-pack  'app.git'",
            "git-upload-archive 'app.git'",
            "git-receive-packx 'app.git'",
            "git-receive-pack 'app\\.git'",
            "git-receive-pack 'app\0.git'",
            "git-receive-pack 'app.git'\n",
            &long,
            &huge,
        ] {
            assert!(app(cmd).is_err(), "{cmd:?} should be refused");
        }
        assert_eq!(parse(&[0xff, 0xfe]), Err(CommandError::NotUtf8));
    }
}
