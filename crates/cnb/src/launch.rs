//! What a CNB slug carries for its launch, and the launch environment built from it.
//!
//! The driver writes `<app>/.cnb/launch.toml`: the buildpacks in build order with their
//! launch layers (under `<app>/.cnb/layers/<buildpack>/`) and the processes of every
//! `launch.toml` merged (a later buildpack's type replaces an earlier one's). The slug
//! runner reads it, sets each layer's `bin/` and `lib/` on the search paths, applies
//! `env/`, `env.launch/` and `env.launch/<process>/`, runs the `exec.d` programs and uses
//! their output, sources `profile.d` scripts when the process runs through a shell, and
//! execs the process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::env::{Env, Phase};
use crate::{files, Error, Result};

/// `<app>/.cnb/launch.toml`.
pub fn metadata_path(app_dir: &Path) -> PathBuf {
    app_dir.join(crate::CNB_DIR).join("launch.toml")
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub buildpacks: Vec<BuildpackLayers>,
    #[serde(default)]
    pub processes: Vec<Process>,
}

/// A buildpack of the build and its launch layers (sorted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildpackLayers {
    pub id: String,
    pub version: String,
    pub api: String,
    /// Its directory under `<app>/.cnb/layers`.
    pub dir: String,
    #[serde(default)]
    pub layers: Vec<String>,
}

/// A process of the app, as a buildpack's `launch.toml` declared it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Process {
    #[serde(rename = "type")]
    pub kind: String,
    /// Program and fixed arguments; for a shell process (API 0.8, `direct = false`) one
    /// shell command line.
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    /// Exec'd as is (no shell between).
    pub direct: bool,
    #[serde(default)]
    pub default: bool,
    #[serde(
        rename = "working-dir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// The buildpack that declared it.
    pub buildpack: String,
}

impl Process {
    /// The command as one shell line: what the release and the Procfile carry.
    pub fn command_line(&self) -> String {
        let quoted = self.args.iter().map(|arg| shell_quote(arg));
        if self.direct {
            self.command
                .iter()
                .map(|part| shell_quote(part))
                .chain(quoted)
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            let mut line = self.command.join(" ");
            for arg in quoted {
                line.push(' ');
                line.push_str(&arg);
            }
            line
        }
    }

    /// Program and arguments of a direct process.
    pub fn argv(&self) -> Vec<String> {
        self.command.iter().chain(&self.args).cloned().collect()
    }
}

/// Quotes for a POSIX shell only when needed.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:=@%+,-".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// The metadata of a CNB slug; `None` for a classic one. Its buildpack directories and
/// layers must be names under `.cnb/layers` (the slug runner reads env files and runs
/// `exec.d` programs from them): the file comes from the slug, whose app part is the
/// pushed source.
pub fn read(app_dir: &Path) -> Result<Option<Metadata>> {
    let path = metadata_path(app_dir);
    let Some(metadata) = files::read_toml::<Metadata>(&path)? else {
        return Ok(None);
    };
    for buildpack in &metadata.buildpacks {
        for name in std::iter::once(&buildpack.dir).chain(&buildpack.layers) {
            let plain = !["", ".", ".."].contains(&name.as_str())
                && !name.contains('/')
                && !name.chars().any(char::is_control);
            if !plain {
                return Err(Error::file(
                    &path,
                    format!(
                        "buildpack {}: {name:?} is not a directory name under {}/layers",
                        buildpack.id,
                        crate::CNB_DIR
                    ),
                ));
            }
        }
    }
    Ok(Some(metadata))
}

pub fn write(app_dir: &Path, metadata: &Metadata) -> Result<()> {
    let path = metadata_path(app_dir);
    let text = toml::to_string(metadata)
        .map_err(|error| Error::file(&path, format!("cannot write: {error}")))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// The environment, and the scripts to source, for launching `process` (a process type,
/// or `None` for a command) of a CNB slug.
#[derive(Debug, Clone)]
pub struct LaunchEnv {
    pub env: Env,
    pub profile_scripts: Vec<PathBuf>,
}

/// Builds the launch environment on top of `env` (the runner's own): layer paths and
/// variable files first, then the `exec.d` programs, which see that environment and whose
/// output overrides it.
pub fn launch_env(
    app_dir: &Path,
    metadata: &Metadata,
    process: Option<&str>,
    mut env: Env,
) -> Result<LaunchEnv> {
    let layers: Vec<PathBuf> = metadata
        .buildpacks
        .iter()
        .flat_map(|bp| {
            let dir = app_dir.join(crate::CNB_DIR).join("layers").join(&bp.dir);
            bp.layers.iter().map(move |layer| dir.join(layer))
        })
        .collect();
    for layer in &layers {
        env.add_layer_paths(layer, Phase::Launch);
        env.apply_env_dir(&layer.join("env"))?;
        env.apply_env_dir(&layer.join("env.launch"))?;
        if let Some(process) = process {
            env.apply_env_dir(&layer.join("env.launch").join(process))?;
        }
    }
    let per_process = |sub: &str| -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = layers.iter().map(|l| l.join(sub)).collect();
        if let Some(process) = process {
            dirs.extend(layers.iter().map(|l| l.join(sub).join(process)));
        }
        dirs
    };
    for dir in per_process("exec.d") {
        for name in files::sorted_names(&dir)? {
            let program = dir.join(&name);
            if program.is_file() {
                for (key, value) in run_exec_d(&program, app_dir, &env)? {
                    env.set(key, value);
                }
            }
        }
    }
    let mut profile_scripts = Vec::new();
    for dir in per_process("profile.d") {
        for name in files::sorted_names(&dir)? {
            let script = dir.join(&name);
            if script.is_file() {
                profile_scripts.push(script);
            }
        }
    }
    Ok(LaunchEnv {
        env,
        profile_scripts,
    })
}

/// Runs one `exec.d` program with file descriptor 3 open for its output (TOML of string
/// variables); its standard output goes to our standard error, as logs.
fn run_exec_d(program: &Path, app_dir: &Path, env: &Env) -> Result<Vec<(String, String)>> {
    let output = Command::new("bash")
        .arg("-c")
        .arg("exec \"$0\" 3>&1 1>&2")
        .arg(program)
        .current_dir(app_dir)
        .env_clear()
        .envs(env.to_os())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|error| Error::file(program, format!("cannot run: {error}")))?;
    if !output.status.success() {
        return Err(Error::file(
            program,
            format!("exec.d program failed ({})", output.status),
        ));
    }
    let text = String::from_utf8(output.stdout)
        .map_err(|_| Error::file(program, "its output is not UTF-8"))?;
    let table: toml::Table = files::parse_toml(program, &text)?;
    let mut vars = Vec::new();
    for (key, value) in table {
        let Some(value) = value.as_str() else {
            return Err(Error::file(program, format!("{key} is not a string")));
        };
        let valid = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(Error::file(
                program,
                format!("{key:?} is not a variable name"),
            ));
        }
        vars.push((key, value.to_owned()));
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn command_lines() {
        let mut process = Process {
            kind: "web".into(),
            command: vec!["python3".into(), "-m".into(), "http.server".into()],
            args: vec!["$PORT".into()],
            direct: true,
            default: true,
            working_dir: None,
            buildpack: "x".into(),
        };
        assert_eq!(process.command_line(), "python3 -m http.server '$PORT'");
        process.direct = false;
        process.command = vec!["python3 -m http.server $PORT".into()];
        process.args = vec!["a b".into()];
        assert_eq!(process.command_line(), "python3 -m http.server $PORT 'a b'");
    }

    #[test]
    fn metadata_names_stay_under_the_layers_directory() {
        let app = tempfile::tempdir().unwrap();
        assert!(read(app.path()).unwrap().is_none());
        std::fs::create_dir_all(app.path().join(".cnb")).unwrap();
        let metadata = |dir: &str, layer: &str| {
            format!(
                "[[buildpacks]]\nid = \"x\"\nversion = \"1\"\napi = \"0.10\"\ndir = \"{dir}\"\n\
                 layers = [\"{layer}\"]\n"
            )
        };
        let path = metadata_path(app.path());
        std::fs::write(&path, metadata("example_hello", "runtime")).unwrap();
        assert_eq!(
            read(app.path()).unwrap().unwrap().buildpacks[0].layers,
            ["runtime"]
        );
        for (dir, layer) in [
            ("..", "runtime"),
            ("example_hello", "../../../usr"),
            ("example_hello", ".."),
            (".", "runtime"),
            ("/usr", "lib"),
            ("", "runtime"),
        ] {
            std::fs::write(&path, metadata(dir, layer)).unwrap();
            let error = read(app.path()).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!("{}: buildpack x: ", path.display()))
                    && error.ends_with("is not a directory name under .cnb/layers"),
                "{dir} {layer}: {error}"
            );
        }
    }

    #[test]
    fn launch_environment_from_layers_and_exec_d() {
        let app = tempfile::tempdir().unwrap();
        let layer = app.path().join(".cnb/layers/example_hello/runtime");
        std::fs::create_dir_all(layer.join("env")).unwrap();
        std::fs::create_dir_all(layer.join("env.launch/web")).unwrap();
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        std::fs::create_dir_all(layer.join("exec.d")).unwrap();
        std::fs::create_dir_all(layer.join("profile.d")).unwrap();
        std::fs::write(layer.join("env/GREETING"), "hello").unwrap();
        std::fs::write(layer.join("env.launch/web/ROLE"), "web").unwrap();
        std::fs::write(layer.join("profile.d/a.sh"), "export A=1\n").unwrap();
        let exec_d = layer.join("exec.d/secret");
        std::fs::write(
            &exec_d,
            "#!/bin/sh\necho logged\necho \"FROM_EXEC_D = \\\"$GREETING!\\\"\" >&3\n",
        )
        .unwrap();
        std::fs::set_permissions(&exec_d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let metadata = Metadata {
            buildpacks: vec![BuildpackLayers {
                id: "example/hello".into(),
                version: "1.0.0".into(),
                api: "0.10".into(),
                dir: "example_hello".into(),
                layers: vec!["runtime".into()],
            }],
            processes: Vec::new(),
        };
        let base: Env = [("PATH".to_owned(), "/usr/bin:/bin".to_owned())]
            .into_iter()
            .collect();
        let launch = launch_env(app.path(), &metadata, Some("web"), base).unwrap();
        assert_eq!(launch.env.get("GREETING"), Some("hello"));
        assert_eq!(launch.env.get("ROLE"), Some("web"));
        assert_eq!(launch.env.get("FROM_EXEC_D"), Some("hello!"));
        assert!(launch
            .env
            .get("PATH")
            .unwrap()
            .starts_with(&layer.join("bin").display().to_string()));
        assert_eq!(launch.profile_scripts, vec![layer.join("profile.d/a.sh")]);
    }
}
