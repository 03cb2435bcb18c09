//! What to run (a process type or a command) and running it: `bash -c` with the app's
//! profile scripts sourced first, exec'd in place of the runner so the app is the process
//! that receives the container's signals. A slug built by Cloud Native Buildpacks
//! (`.cnb/launch.toml`) runs in its launch environment: layer `env/` and `env.launch/`
//! files, `exec.d` output and (for what runs through bash) `profile.d` scripts, and its
//! processes run as declared.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use deis_cnb::launch::Metadata;
use deis_slug::{self as slug, ProcessTypes};

use crate::RunnerError;

/// Procfile and `.release` larger than this are not slugs we built.
const MAX_METADATA_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_PORT: &str = "5000";

/// What the arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invocation {
    /// `start web`: a process type from the Procfile or the release if the slug declares
    /// it, else a program run without arguments (`start pwd`).
    ProcessType(String),
    /// `start 'cmd && other'`: one command line, run by bash.
    CommandLine(String),
    /// `start prog arg…` or `prog arg…`: a program with its exact arguments.
    Command(Vec<OsString>),
}

pub const USAGE: &str = "usage: slugrunner start <process-type>  |  slugrunner start <command> [args…]  |  slugrunner <command> [args…]";

impl Invocation {
    pub fn parse(args: Vec<OsString>) -> Result<Invocation, RunnerError> {
        let usage = || RunnerError::Usage(USAGE.to_owned());
        let Some(first) = args.first() else {
            return Err(usage());
        };
        if first != "start" {
            return Ok(Invocation::Command(args));
        }
        let rest = &args[1..];
        match rest {
            [] => Err(usage()),
            [single] => match single.to_str() {
                Some(name) if slug::validate_process_type(name).is_ok() => {
                    Ok(Invocation::ProcessType(name.to_owned()))
                }
                Some(line) if !line.trim().is_empty() => {
                    Ok(Invocation::CommandLine(line.to_owned()))
                }
                Some(_) => Err(usage()),
                None => Ok(Invocation::Command(rest.to_vec())),
            },
            _ => Ok(Invocation::Command(rest.to_vec())),
        }
    }
}

/// The app's process types: the Procfile's, plus the release's `default_process_types`
/// for types the Procfile does not name (as Heroku merges them). `None` when the slug has
/// neither file.
pub fn process_types(app_dir: &Path) -> Result<Option<ProcessTypes>, RunnerError> {
    let procfile = read_metadata(&app_dir.join("Procfile"))?;
    let release = read_metadata(&app_dir.join(".release"))?;
    if procfile.is_none() && release.is_none() {
        return Ok(None);
    }
    let mut types = match &release {
        Some(text) => slug::parse_release_process_types(text).map_err(RunnerError::Release)?,
        None => ProcessTypes::default(),
    };
    if let Some(text) = &procfile {
        let declared = slug::parse_procfile(text).map_err(RunnerError::Procfile)?;
        types.0.extend(declared.0);
    }
    Ok(Some(types))
}

fn read_metadata(path: &Path) -> Result<Option<String>, RunnerError> {
    let unreadable = |reason: String| RunnerError::Metadata {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(unreadable(error.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| unreadable(error.to_string()))?;
    if bytes.len() as u64 > MAX_METADATA_BYTES {
        return Err(unreadable(format!(
            "larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|_| unreadable("not UTF-8 text".to_owned()))
}

/// The bash script that prepares the environment; `$1` (or `"$@"`) is then exec'd. A CNB
/// slug's layer `profile.d` scripts come first.
fn profile_script(app_dir: &Path, layer_scripts: &[PathBuf], tail: &str) -> String {
    let app = shell_quote(&app_dir.display().to_string());
    let layers: String = layer_scripts
        .iter()
        .map(|script| format!(". {}\n", shell_quote(&script.display().to_string())))
        .collect();
    format!(
        "cd {app} || exit 1\n\
         {layers}\
         for slugrunner_profile in {app}/.profile.d/*.sh; do\n\
         \x20 if [ -f \"$slugrunner_profile\" ]; then . \"$slugrunner_profile\"; fi\n\
         done\n\
         unset slugrunner_profile\n\
         if [ -f {app}/.profile ]; then . {app}/.profile; fi\n\
         {tail}\n"
    )
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// What bash finally runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A command line (from the Procfile or the arguments), `name` shown as its `$0`.
    Line { name: String, line: String },
    /// A program and its exact arguments.
    Program(Vec<OsString>),
    /// `start <word>` where the word is no declared process type: run as a program, as
    /// `start <program> <args…>` would; `unrunnable` is the error if bash cannot run it.
    NotAType { program: String, unrunnable: String },
    /// A CNB process run directly: its program and arguments, in its working directory.
    Process {
        name: String,
        argv: Vec<String>,
        working_dir: Option<String>,
    },
}

impl Launch {
    /// The process type it starts, if any (CNB `env.launch/<type>/`, `exec.d/<type>/`).
    fn process_type(&self) -> Option<&str> {
        match self {
            Launch::Process { name, .. } => Some(name),
            Launch::Line { name, .. } if name != "slugrunner" => Some(name),
            _ => None,
        }
    }
}

/// Turns the invocation into what to run, looking process types up in the app: the
/// Procfile first, then a CNB slug's processes, then the release's defaults.
pub fn resolve(
    app_dir: &Path,
    invocation: Invocation,
    cnb: Option<&Metadata>,
) -> Result<Launch, RunnerError> {
    if let (Invocation::ProcessType(name), Some(metadata)) = (&invocation, cnb) {
        let in_procfile = match read_metadata(&app_dir.join("Procfile"))? {
            Some(text) => slug::parse_procfile(&text)
                .map_err(RunnerError::Procfile)?
                .get(name)
                .is_some(),
            None => false,
        };
        let process = metadata.processes.iter().find(|p| &p.kind == name);
        if let (false, Some(process)) = (in_procfile, process) {
            return Ok(if process.direct {
                Launch::Process {
                    name: name.clone(),
                    argv: process.argv(),
                    working_dir: process.working_dir.clone(),
                }
            } else {
                // A shell process (Buildpack API 0.8) runs in its working directory too.
                let line = match &process.working_dir {
                    Some(dir) => format!(
                        "cd {} || exit 1\n{}",
                        shell_quote(&app_dir.join(dir).display().to_string()),
                        process.command_line()
                    ),
                    None => process.command_line(),
                };
                Launch::Line {
                    name: name.clone(),
                    line,
                }
            });
        }
    }
    match invocation {
        Invocation::Command(args) => Ok(Launch::Program(args)),
        Invocation::CommandLine(line) => Ok(Launch::Line {
            name: "slugrunner".to_owned(),
            line,
        }),
        Invocation::ProcessType(name) => {
            // A broken Procfile stays an error: which word wins cannot be told without it.
            let types = process_types(app_dir)?;
            if let Some(line) = types.as_ref().and_then(|types| types.get(&name)) {
                return Ok(Launch::Line {
                    line: line.to_owned(),
                    name,
                });
            }
            let declared = match &types {
                None => format!("no Procfile and no .release in {}", app_dir.display()),
                Some(types) if types.is_empty() => "the slug declares none".to_owned(),
                Some(types) => format!("known types: {}", types.names().join(", ")),
            };
            Ok(Launch::NotAType {
                unrunnable: format!(
                    "{name:?} is neither a process type ({declared}) nor a command that could be run"
                ),
                program: name,
            })
        }
    }
}

/// Replaces this process with bash running `launch` after the profile scripts (in a CNB
/// slug's launch environment). Returns only on failure.
pub fn exec(app_dir: &Path, launch: &Launch, cnb: Option<&Metadata>) -> RunnerError {
    match command(app_dir, launch, cnb) {
        Ok(mut command) => RunnerError::Exec(command.exec()),
        Err(error) => error,
    }
}

/// The bash command that runs `launch` after the profile scripts.
fn command(
    app_dir: &Path,
    launch: &Launch,
    cnb: Option<&Metadata>,
) -> Result<Command, RunnerError> {
    let mut command = Command::new("bash");
    command.arg("-c");
    let mut layer_scripts = Vec::new();
    if let Some(metadata) = cnb {
        let mut base = deis_cnb::env::Env::from_process();
        base.set("HOME", app_dir.display().to_string());
        let launch_env =
            deis_cnb::launch::launch_env(app_dir, metadata, launch.process_type(), base)
                .map_err(RunnerError::Cnb)?;
        command.env_clear().envs(launch_env.env.to_os());
        layer_scripts = launch_env.profile_scripts;
    }
    match launch {
        Launch::Process {
            name,
            argv,
            working_dir,
        } => {
            let dir = working_dir
                .as_deref()
                .map_or_else(|| app_dir.to_owned(), |dir| app_dir.join(dir));
            let tail = format!(
                "cd {} || exit 1\nexec \"$@\"",
                shell_quote(&dir.display().to_string())
            );
            // A direct process involves no shell: the Platform API sources layer
            // `profile.d` scripts only for processes run through one.
            command
                .arg(profile_script(app_dir, &[], &tail))
                .arg(name)
                .args(argv);
        }
        Launch::Program(args) => {
            command
                .arg(profile_script(app_dir, &layer_scripts, "exec \"$@\""))
                .arg("slugrunner")
                .args(args);
        }
        Launch::NotAType {
            program,
            unrunnable,
        } => {
            // execfail keeps the shell alive after a failed exec, so the error can say the
            // word was no process type either (a typo'd type would otherwise only get
            // bash's "not found"); bash's status (127 not found, 126 not executable) stays.
            let tail = format!(
                "shopt -s execfail\n\
                 exec \"$@\" || {{ slugrunner_status=$?; \
                 printf '%s\\n' {} >&2; exit \"$slugrunner_status\"; }}",
                shell_quote(&format!("slugrunner: error: {unrunnable}"))
            );
            command
                .arg(profile_script(app_dir, &layer_scripts, &tail))
                .arg("slugrunner")
                .arg(program);
        }
        Launch::Line { name, line } => {
            // The line runs in a fresh `bash -c` exec'd in place of the profile shell, so
            // no shell lingers in between: the app (or bash running it) gets the signals,
            // and bash execs a lone simple command itself.
            command
                .arg(profile_script(
                    app_dir,
                    &layer_scripts,
                    "exec bash -c \"$1\" \"$0\"",
                ))
                .arg(name)
                .arg(line);
        }
    }
    command.current_dir(app_dir).env("HOME", app_dir);
    if std::env::var_os("PORT").is_none_or(|port| port.is_empty()) {
        command.env("PORT", DEFAULT_PORT);
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_select_what_runs() {
        assert_eq!(
            Invocation::parse(args(&["start", "web"])).unwrap(),
            Invocation::ProcessType("web".into())
        );
        assert_eq!(
            Invocation::parse(args(&["start", "echo hi && exit 3"])).unwrap(),
            Invocation::CommandLine("echo hi && exit 3".into())
        );
        assert_eq!(
            Invocation::parse(args(&["start", "python3", "-c", "print(1)"])).unwrap(),
            Invocation::Command(args(&["python3", "-c", "print(1)"]))
        );
        assert_eq!(
            Invocation::parse(args(&["bash"])).unwrap(),
            Invocation::Command(args(&["bash"]))
        );
        for bad in [&[][..], &["start"][..], &["start", " "][..]] {
            assert!(matches!(
                Invocation::parse(args(bad)),
                Err(RunnerError::Usage(_))
            ));
        }
    }

    #[test]
    fn procfile_types_override_release_defaults() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(".release"),
            "---\ndefault_process_types:\n  web: default-web\n  console: irb\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("Procfile"), "web: ./server\n").unwrap();
        let types = process_types(dir.path()).unwrap().unwrap();
        assert_eq!(types.get("web"), Some("./server"));
        assert_eq!(types.get("console"), Some("irb"));
    }

    #[test]
    fn missing_metadata_declares_no_types() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(process_types(dir.path()).unwrap(), None);
    }

    fn resolve_word(app_dir: &Path, word: &str) -> Result<Launch, RunnerError> {
        resolve(app_dir, Invocation::parse(args(&["start", word]))?, None)
    }

    #[test]
    fn a_declared_type_wins_over_a_program_of_the_same_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), "pwd: echo shadowed\n").unwrap();
        std::fs::write(
            dir.path().join(".release"),
            "---\ndefault_process_types:\n  ls: echo from-release\n",
        )
        .unwrap();
        for (word, line) in [("pwd", "echo shadowed"), ("ls", "echo from-release")] {
            assert_eq!(
                resolve_word(dir.path(), word).unwrap(),
                Launch::Line {
                    name: word.to_owned(),
                    line: line.to_owned()
                }
            );
        }
    }

    #[test]
    fn an_undeclared_word_runs_as_a_program() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), "web: ./server\nworker: ./w\n").unwrap();
        assert_eq!(
            resolve_word(dir.path(), "pwd").unwrap(),
            Launch::NotAType {
                program: "pwd".to_owned(),
                unrunnable: "\"pwd\" is neither a process type (known types: web, worker) \
                             nor a command that could be run"
                    .to_owned(),
            }
        );
    }

    #[test]
    fn without_procfile_or_release_a_word_runs_as_a_program() {
        let dir = tempfile::tempdir().unwrap();
        let Launch::NotAType {
            program,
            unrunnable,
        } = resolve_word(dir.path(), "web").unwrap()
        else {
            panic!("web should fall back to a program");
        };
        assert_eq!(program, "web");
        assert!(
            unrunnable.contains("no Procfile and no .release in"),
            "{unrunnable}"
        );
    }

    #[test]
    fn a_broken_procfile_is_still_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), "web ./server\n").unwrap();
        assert!(matches!(
            resolve_word(dir.path(), "pwd"),
            Err(RunnerError::Procfile(_))
        ));
    }

    #[test]
    fn a_fallback_runs_the_program_or_says_it_is_neither() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Procfile"), "web: ./server\n").unwrap();
        let app_dir = dir.path().canonicalize().unwrap();

        let pwd = command(&app_dir, &resolve_word(&app_dir, "pwd").unwrap(), None)
            .unwrap()
            .output()
            .unwrap();
        assert!(pwd.status.success(), "{pwd:?}");
        assert_eq!(
            String::from_utf8_lossy(&pwd.stdout).trim_end(),
            app_dir.display().to_string()
        );

        let missing = command(
            &app_dir,
            &resolve_word(&app_dir, "no-such-program").unwrap(),
            None,
        )
        .unwrap()
        .output()
        .unwrap();
        assert_eq!(missing.status.code(), Some(127), "{missing:?}");
        let stderr = String::from_utf8_lossy(&missing.stderr);
        assert!(
            stderr.contains(
                "slugrunner: error: \"no-such-program\" is neither a process type \
                 (known types: web) nor a command that could be run"
            ),
            "{stderr}"
        );
    }

    #[test]
    fn a_cnb_process_runs_directly_in_its_launch_environment() {
        let dir = tempfile::tempdir().unwrap();
        let app_dir = dir.path().canonicalize().unwrap();
        let layer = app_dir.join(".cnb/layers/example/runtime");
        std::fs::create_dir_all(layer.join("env.launch")).unwrap();
        std::fs::create_dir_all(layer.join("profile.d")).unwrap();
        std::fs::write(layer.join("env.launch/GREETING"), "hello from a layer").unwrap();
        std::fs::write(layer.join("profile.d/p.sh"), "export PROFILED=yes\n").unwrap();
        let metadata: Metadata = toml::from_str(
            "[[buildpacks]]\nid = \"example\"\nversion = \"1\"\napi = \"0.10\"\ndir = \"example\"\n\
             layers = [\"runtime\"]\n[[processes]]\ntype = \"web\"\n\
             command = [\"sh\", \"-c\", \"echo \\\"$GREETING $PROFILED $0\\\"\"]\nargs = [\"x y\"]\n\
             direct = true\nbuildpack = \"example\"\n",
        )
        .unwrap();
        let run = |launch: &Launch, metadata: &Metadata| {
            let output = command(&app_dir, launch, Some(metadata))
                .unwrap()
                .output()
                .unwrap();
            assert!(output.status.success(), "{output:?}");
            String::from_utf8_lossy(&output.stdout)
                .trim_end()
                .to_owned()
        };
        let invocation = Invocation::parse(args(&["start", "web"])).unwrap();
        let launch = resolve(&app_dir, invocation, Some(&metadata)).unwrap();
        assert!(matches!(launch, Launch::Process { .. }), "{launch:?}");
        assert_eq!(
            run(&launch, &metadata),
            "hello from a layer  x y",
            "a direct process gets the layer env but no profile.d"
        );

        // A command line runs through bash, which sources the layers' profile.d.
        let invocation =
            Invocation::parse(args(&["start", "echo \"$GREETING $PROFILED\""])).unwrap();
        let launch = resolve(&app_dir, invocation, Some(&metadata)).unwrap();
        assert_eq!(run(&launch, &metadata), "hello from a layer yes");

        // A shell process of Buildpack API 0.8 runs in its working directory as well.
        std::fs::create_dir_all(app_dir.join("sub dir")).unwrap();
        let shell: Metadata = toml::from_str(
            "[[processes]]\ntype = \"worker\"\ncommand = [\"pwd; echo $GREETING\"]\n\
             direct = false\nworking-dir = \"sub dir\"\nbuildpack = \"example\"\n",
        )
        .unwrap();
        let shell = Metadata {
            processes: shell.processes,
            ..metadata.clone()
        };
        let invocation = Invocation::parse(args(&["start", "worker"])).unwrap();
        let launch = resolve(&app_dir, invocation, Some(&shell)).unwrap();
        assert!(matches!(launch, Launch::Line { .. }), "{launch:?}");
        assert_eq!(
            run(&launch, &shell),
            format!("{}\nhello from a layer", app_dir.join("sub dir").display())
        );

        // A Procfile entry wins over the buildpack's process.
        std::fs::write(app_dir.join("Procfile"), "web: echo from-procfile\n").unwrap();
        let invocation = Invocation::parse(args(&["start", "web"])).unwrap();
        let launch = resolve(&app_dir, invocation, Some(&metadata)).unwrap();
        assert!(matches!(launch, Launch::Line { .. }), "{launch:?}");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("/a'b"), r"'/a'\''b'");
    }
}
