//! The build phase: cached layers restored, each buildpack of the selected group run
//! with its layers directory and its part of the build plan, build layers' environments
//! handed to later buildpacks, and at the end the cache saved and the slug tree left
//! behind: the app plus launch layers and `.cnb/launch.toml`, with `.release` naming the
//! processes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::descriptor::Buildpack;
use crate::detect::{PlanEntry, Require, Selected};
use crate::env::{Env, Phase};
use crate::launch::{self, BuildpackLayers, Metadata, Process};
use crate::platform::Platform;
use crate::{files, Error, Result};

/// Names a layer may not have: the buildpack's own metadata files.
const RESERVED: [&str; 3] = ["build", "launch", "store"];

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct Types {
    #[serde(default)]
    pub launch: bool,
    #[serde(default)]
    pub build: bool,
    #[serde(default)]
    pub cache: bool,
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct LayerToml {
    #[serde(default)]
    types: Option<Types>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metadata: Option<toml::Table>,
}

#[derive(Debug)]
struct Layer {
    name: String,
    types: Types,
}

/// `launch.toml` of API 0.9 and later: `command` is an array.
#[derive(Deserialize)]
struct LaunchToml {
    #[serde(default)]
    processes: Vec<RawProcess>,
}

#[derive(Deserialize)]
struct RawProcess {
    #[serde(rename = "type")]
    kind: String,
    command: toml::Value,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    direct: Option<bool>,
    #[serde(default)]
    default: bool,
    #[serde(rename = "working-dir")]
    working_dir: Option<String>,
}

#[derive(Deserialize)]
struct BuildToml {
    #[serde(default)]
    unmet: Vec<Unmet>,
}

#[derive(Deserialize)]
struct Unmet {
    name: String,
}

#[derive(Serialize)]
struct BuildpackPlan<'a> {
    entries: Vec<&'a Require>,
}

/// Runs the build of the selected group. Progress goes to `out`, the buildpacks' own
/// output straight to our standard output and error.
pub fn build(platform: &Platform, selected: &Selected, out: &mut dyn Write) -> Result<Metadata> {
    let cache_root = platform.cache_dir.join("cnb");
    restore_cache(platform, &selected.members, &cache_root, out)?;
    let _ = writeln!(out, "===> BUILDING");
    let mut env = platform.base_env.clone();
    let mut met = vec![false; selected.plan.len()];
    let mut all_layers = Vec::new();
    let mut processes: Vec<Process> = Vec::new();
    for (index, buildpack) in selected.members.iter().enumerate() {
        let layers_dir = platform.layers_dir(buildpack);
        std::fs::create_dir_all(&layers_dir).map_err(|e| Error::io(&layers_dir, e))?;
        let entries: Vec<usize> = (0..selected.plan.len())
            .filter(|&e| !met[e] && selected.plan[e].providers.contains(&index))
            .collect();
        let plan_path = platform.scratch_dir.join(format!("plan-{index}.toml"));
        write_plan(&plan_path, entries.iter().map(|&e| &selected.plan[e]))?;
        let _ = out.flush();
        run_build(platform, buildpack, &env, &layers_dir, &plan_path)?;
        let unmet = read_unmet(&layers_dir, &selected.plan, &entries)?;
        for e in entries {
            if !unmet.contains(&selected.plan[e].name) {
                met[e] = true;
            }
        }
        merge_processes(&mut processes, read_processes(&layers_dir, buildpack)?);
        let layers = read_layers(&layers_dir)?;
        for layer in &layers {
            let dir = layers_dir.join(&layer.name);
            let no_type = !(layer.types.launch || layer.types.build || layer.types.cache);
            if no_type {
                // Ignored layers last only as long as their buildpack's build.
                files::remove(&dir)?;
            } else if layer.types.build && files::is_dir(&dir) {
                env.add_layer_paths(&dir, Phase::Build);
                env.apply_env_dir(&dir.join("env"))?;
                env.apply_env_dir(&dir.join("env.build"))?;
            }
        }
        all_layers.push(layers);
    }
    let _ = writeln!(out, "===> EXPORTING");
    save_cache(platform, selected, &all_layers, &cache_root, out)?;
    let metadata = finish_layers(platform, selected, &all_layers, processes, out)?;
    launch::write(&platform.app_dir, &metadata)?;
    write_release(&platform.app_dir, &metadata.processes)?;
    Ok(metadata)
}

fn run_build(
    platform: &Platform,
    buildpack: &Buildpack,
    env: &Env,
    layers_dir: &Path,
    plan_path: &Path,
) -> Result<()> {
    let env = platform.env_for(
        buildpack,
        env,
        &[
            ("CNB_LAYERS_DIR", layers_dir.display().to_string()),
            ("CNB_BP_PLAN_PATH", plan_path.display().to_string()),
        ],
    );
    let executable = buildpack.dir.join("bin/build");
    let status = Command::new(&executable)
        .arg(layers_dir)
        .arg(&platform.platform_dir)
        .arg(plan_path)
        .current_dir(&platform.app_dir)
        .env_clear()
        .envs(env.to_os())
        .stdin(Stdio::null())
        .status()
        .map_err(|error| {
            Error::Buildpack(format!("cannot run {}: {error}", executable.display()))
        })?;
    if status.success() {
        return Ok(());
    }
    let why = status.code().map_or("killed by a signal".to_owned(), |c| {
        format!("exit status {c}")
    });
    Err(Error::Buildpack(format!(
        "buildpack {} failed ({why})",
        buildpack.label()
    )))
}

fn write_plan<'a>(path: &Path, entries: impl Iterator<Item = &'a PlanEntry>) -> Result<()> {
    let plan = BuildpackPlan {
        entries: entries.flat_map(|entry| entry.requires.iter()).collect(),
    };
    let text = toml::to_string(&plan).map_err(|e| Error::file(path, e.to_string()))?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Names the buildpack left unmet (`build.toml`); each must be in its plan.
fn read_unmet(layers_dir: &Path, plan: &[PlanEntry], given: &[usize]) -> Result<Vec<String>> {
    let path = layers_dir.join("build.toml");
    let Some(build) = files::read_toml::<BuildToml>(&path)? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = build.unmet.into_iter().map(|u| u.name).collect();
    for name in &names {
        if !given.iter().any(|&e| &plan[e].name == name) {
            return Err(Error::file(
                &path,
                format!("unmet entry {name:?} is not in the buildpack's plan"),
            ));
        }
    }
    Ok(names)
}

/// The processes of the buildpack's `launch.toml`, checked against its API version.
fn read_processes(layers_dir: &Path, buildpack: &Buildpack) -> Result<Vec<Process>> {
    let path = layers_dir.join("launch.toml");
    let Some(launch) = files::read_toml::<LaunchToml>(&path)? else {
        return Ok(Vec::new());
    };
    let api = buildpack.api;
    let mut processes: Vec<Process> = Vec::new();
    for raw in launch.processes {
        check_process_type(&path, &raw.kind)?;
        if processes.iter().any(|p| p.kind == raw.kind) {
            return Err(Error::file(
                &path,
                format!("process type {:?} is declared twice", raw.kind),
            ));
        }
        let (command, direct) = if api.command_is_array() {
            if raw.direct.is_some() {
                return Err(Error::file(&path, format!("process {:?}: `direct` was removed in Buildpack API 0.9 (this buildpack declares {api})", raw.kind)));
            }
            let command = string_array(&raw.command).ok_or_else(|| {
                Error::file(
                    &path,
                    format!(
                        "process {:?}: `command` must be an array of strings (Buildpack API {api})",
                        raw.kind
                    ),
                )
            })?;
            (command, true)
        } else {
            let command = raw.command.as_str().map(str::to_owned).ok_or_else(|| {
                Error::file(
                    &path,
                    format!(
                        "process {:?}: `command` must be a string (Buildpack API {api})",
                        raw.kind
                    ),
                )
            })?;
            (vec![command], raw.direct.unwrap_or(false))
        };
        if command.first().is_none_or(|c| c.trim().is_empty()) {
            return Err(Error::file(
                &path,
                format!("process {:?} has an empty command", raw.kind),
            ));
        }
        if raw.default && processes.iter().any(|p| p.default) {
            return Err(Error::file(
                &path,
                format!(
                    "process {:?} is a second process with default = true; a buildpack may declare one",
                    raw.kind
                ),
            ));
        }
        // The release carries each command on one line (a Procfile line): a line break or
        // another control character would not survive it.
        if let Some(bad) = command
            .iter()
            .chain(&raw.args)
            .flat_map(|part| part.chars())
            .find(|&c| c.is_control() && c != '\t')
        {
            return Err(Error::file(
                &path,
                format!(
                    "process {:?}: its command contains the control character {bad:?}; a release's process command is one line",
                    raw.kind
                ),
            ));
        }
        if let Some(dir) = &raw.working_dir {
            if dir.split('/').any(|part| part == "..") {
                return Err(Error::file(
                    &path,
                    format!("process {:?}: working-dir {dir:?} leaves the app", raw.kind),
                ));
            }
        }
        processes.push(Process {
            kind: raw.kind,
            command,
            args: raw.args,
            direct,
            default: raw.default,
            working_dir: raw.working_dir,
            buildpack: buildpack.id.clone(),
        });
    }
    Ok(processes)
}

/// Adds a buildpack's processes to those of the buildpacks before it: a later definition
/// of a type replaces the earlier one (a non-default one may so leave no default), and the
/// last process declared `default` is the only default.
fn merge_processes(processes: &mut Vec<Process>, later: Vec<Process>) {
    if later.iter().any(|p| p.default) {
        for process in processes.iter_mut() {
            process.default = false;
        }
    }
    for process in later {
        processes.retain(|p| p.kind != process.kind);
        processes.push(process);
    }
}

fn string_array(value: &toml::Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// The spec allows letters, digits, `.`, `_` and `-`; a release's process types are
/// lowercase letters, digits and `-` (at most 63).
fn check_process_type(path: &Path, kind: &str) -> Result<()> {
    let valid = !kind.is_empty()
        && kind.len() <= 63
        && kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if valid {
        return Ok(());
    }
    Err(Error::file(path, format!("process type {kind:?} is not allowed: use lowercase letters, digits and '-' (at most 63)")))
}

/// The layers a buildpack left: every `<layer>.toml` and every directory, checked.
fn read_layers(layers_dir: &Path) -> Result<Vec<Layer>> {
    let mut layers: Vec<Layer> = Vec::new();
    for name in files::sorted_names(layers_dir)? {
        let path = layers_dir.join(&name);
        let layer_name = if let Some(stem) = name.strip_suffix(".toml") {
            if RESERVED.contains(&stem) {
                continue;
            }
            stem.to_owned()
        } else if files::is_dir(&path) {
            name.clone()
        } else {
            continue; // SBOMs and other files are not layers
        };
        check_layer_name(&path, &layer_name)?;
        if layers.iter().any(|l| l.name == layer_name) {
            continue;
        }
        let toml_path = layers_dir.join(format!("{layer_name}.toml"));
        let types = files::read_toml::<LayerToml>(&toml_path)?
            .and_then(|t| t.types)
            .unwrap_or_default();
        layers.push(Layer {
            name: layer_name,
            types,
        });
    }
    Ok(layers)
}

fn check_layer_name(path: &Path, name: &str) -> Result<()> {
    let problem = if name.contains("..") {
        "contains \"..\""
    } else if name.is_empty() || name.starts_with('.') {
        "starts with \".\""
    } else if RESERVED.contains(&name) {
        "is reserved (build, launch and store are the buildpack's metadata files)"
    } else if name.chars().any(|c| c.is_control() || c == '/') {
        "contains control characters"
    } else {
        return Ok(());
    };
    Err(Error::file(
        path,
        format!("layer name {name:?} {problem}, which is not allowed"),
    ))
}

/// Cached layers of the group's buildpacks go back into their layers directories (with
/// their metadata, without `[types]`); the rest of the old cache is dropped.
fn restore_cache(
    platform: &Platform,
    members: &[Buildpack],
    cache_root: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    let _ = writeln!(out, "===> RESTORING");
    for buildpack in members {
        let cached = cache_root.join(buildpack.escaped_id());
        let layers_dir = platform.layers_dir(buildpack);
        for name in files::sorted_names(&cached)? {
            let Some(layer) = name.strip_suffix(".toml") else {
                continue;
            };
            if layer == "store" {
                std::fs::create_dir_all(&layers_dir).map_err(|e| Error::io(&layers_dir, e))?;
                files::copy_tree(&cached.join(&name), &layers_dir.join(&name))?;
                continue;
            }
            let toml_path = cached.join(&name);
            let Ok(Some(stored)) = files::read_toml::<LayerToml>(&toml_path) else {
                continue; // a cache we cannot read only costs time
            };
            let content = cached.join(layer);
            if check_layer_name(&toml_path, layer).is_err()
                || !stored.types.is_some_and(|t| t.cache)
                || !files::is_dir(&content)
            {
                continue;
            }
            files::move_tree(&content, &layers_dir.join(layer))?;
            let restored = LayerToml {
                types: None,
                metadata: stored.metadata,
            };
            let text =
                toml::to_string(&restored).map_err(|e| Error::file(&toml_path, e.to_string()))?;
            let target = layers_dir.join(&name);
            std::fs::write(&target, text).map_err(|e| Error::io(&target, e))?;
            let _ = writeln!(
                out,
                "Restoring data for \"{}:{layer}\" from cache",
                buildpack.id
            );
        }
    }
    files::remove(cache_root)
}

fn save_cache(
    platform: &Platform,
    selected: &Selected,
    all_layers: &[Vec<Layer>],
    cache_root: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    for (buildpack, layers) in selected.members.iter().zip(all_layers) {
        let layers_dir = platform.layers_dir(buildpack);
        let cached = cache_root.join(buildpack.escaped_id());
        let store = layers_dir.join("store.toml");
        if store.is_file() {
            std::fs::create_dir_all(&cached).map_err(|e| Error::io(&cached, e))?;
            files::copy_tree(&store, &cached.join("store.toml"))?;
        }
        for layer in layers.iter().filter(|l| l.types.cache) {
            let dir = layers_dir.join(&layer.name);
            if !files::is_dir(&dir) {
                continue;
            }
            std::fs::create_dir_all(&cached).map_err(|e| Error::io(&cached, e))?;
            let toml_name = format!("{}.toml", layer.name);
            files::copy_tree(&layers_dir.join(&toml_name), &cached.join(&toml_name))?;
            if layer.types.launch {
                files::copy_tree(&dir, &cached.join(&layer.name))?;
            } else {
                files::move_tree(&dir, &cached.join(&layer.name))?;
            }
            let _ = writeln!(out, "Adding cache layer '{}:{}'", buildpack.id, layer.name);
        }
    }
    Ok(())
}

/// Leaves only launch layers under the layers root and returns the launch metadata.
fn finish_layers(
    platform: &Platform,
    selected: &Selected,
    all_layers: &[Vec<Layer>],
    processes: Vec<Process>,
    out: &mut dyn Write,
) -> Result<Metadata> {
    let mut buildpacks = Vec::new();
    for (buildpack, layers) in selected.members.iter().zip(all_layers) {
        let layers_dir = platform.layers_dir(buildpack);
        let mut kept = Vec::new();
        for layer in layers.iter().filter(|l| l.types.launch) {
            if files::is_dir(&layers_dir.join(&layer.name)) {
                kept.push(layer.name.clone());
                let _ = writeln!(out, "Adding layer '{}:{}'", buildpack.id, layer.name);
            } else {
                let _ = writeln!(out, "Warning: layer '{}:{}' is launch = true but has no directory; there is no earlier slug layer to reuse, so it is left out", buildpack.id, layer.name);
            }
        }
        for name in files::sorted_names(&layers_dir)? {
            if !kept.contains(&name) {
                files::remove(&layers_dir.join(&name))?;
            }
        }
        if kept.is_empty() {
            files::remove(&layers_dir)?;
        }
        buildpacks.push(BuildpackLayers {
            id: buildpack.id.clone(),
            version: buildpack.version.clone(),
            api: buildpack.api.to_string(),
            dir: buildpack.escaped_id(),
            layers: kept,
        });
    }
    Ok(Metadata {
        buildpacks,
        processes,
    })
}

/// `.release` with the processes as `default_process_types` (double-quoted YAML), so the
/// builder and the runner see them as they see a classic buildpack's.
fn write_release(app_dir: &Path, processes: &[Process]) -> Result<()> {
    let mut text = String::from("---\n");
    if processes.is_empty() {
        text.push_str("default_process_types: {}\n");
    } else {
        text.push_str("default_process_types:\n");
        for process in processes {
            let line = process
                .command_line()
                .replace('\\', "\\\\")
                .replace('"', "\\\"");
            text.push_str(&format!("  {}: \"{line}\"\n", process.kind));
        }
    }
    let path = app_dir.join(".release");
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_names() {
        let p = Path::new("/layers/x.toml");
        assert!(check_layer_name(p, "node-modules").is_ok());
        for bad in ["..", "a..b", ".hidden", "launch", "store"] {
            assert!(check_layer_name(p, bad).is_err(), "{bad}");
        }
        let message = check_layer_name(p, "../escape").unwrap_err().to_string();
        assert_eq!(
            message,
            "/layers/x.toml: layer name \"../escape\" contains \"..\", which is not allowed"
        );
    }

    /// Buildpack `x` of Buildpack API 0.`minor` in `dir`.
    fn buildpack(dir: &Path, minor: u32) -> Buildpack {
        Buildpack {
            id: "x".into(),
            version: "1.0.0".into(),
            name: None,
            api: crate::api::Api { major: 0, minor },
            dir: dir.into(),
            clear_env: false,
            order: Vec::new(),
        }
    }

    fn process(kind: &str, default: bool, buildpack: &str) -> Process {
        Process {
            kind: kind.into(),
            command: vec!["run".into()],
            args: Vec::new(),
            direct: true,
            default,
            working_dir: None,
            buildpack: buildpack.into(),
        }
    }

    #[test]
    fn the_last_default_process_is_the_only_default() {
        let summary = |processes: &[Process]| -> Vec<(String, bool, String)> {
            processes
                .iter()
                .map(|p| (p.kind.clone(), p.default, p.buildpack.clone()))
                .collect()
        };
        let mut processes = Vec::new();
        merge_processes(
            &mut processes,
            vec![process("web", true, "a"), process("console", false, "a")],
        );
        merge_processes(&mut processes, vec![process("worker", true, "b")]);
        assert_eq!(
            summary(&processes),
            [
                ("web".into(), false, "a".into()),
                ("console".into(), false, "a".into()),
                ("worker".into(), true, "b".into()),
            ]
        );
        // A later non-default definition of the default type leaves no default.
        merge_processes(&mut processes, vec![process("worker", false, "c")]);
        assert!(processes.iter().all(|p| !p.default), "{processes:?}");
        assert_eq!(processes.last().unwrap().buildpack, "c");
        // A buildpack without a default keeps the earlier one.
        let mut processes = vec![process("web", true, "a")];
        merge_processes(&mut processes, vec![process("worker", false, "b")]);
        assert!(processes[0].default);
    }

    /// The processes of `launch_toml` written to `bp`'s directory (its layers directory here).
    fn processes_of(bp: &Buildpack, launch_toml: &str) -> Result<Vec<Process>> {
        std::fs::write(bp.dir.join("launch.toml"), launch_toml).unwrap();
        read_processes(&bp.dir, bp)
    }

    #[test]
    fn commands_a_release_cannot_carry_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bp = buildpack(dir.path(), 9);
        let multi_line = "[[processes]]\ntype = \"web\"\n\
                          command = [\"bash\", \"-c\", \"\"\"\nset -e\nexec server\"\"\"]\n";
        let error = processes_of(&bp, multi_line).unwrap_err().to_string();
        assert!(
            error.ends_with("launch.toml: process \"web\": its command contains the control character '\\n'; a release's process command is one line"),
            "{error}"
        );
        let escape =
            "[[processes]]\ntype = \"web\"\ncommand = [\"server\"]\nargs = [\"a\\u001bb\"]\n";
        assert!(processes_of(&bp, escape).is_err());
        // A tab is fine: the release writes it as it is.
        let tab = "[[processes]]\ntype = \"web\"\ncommand = [\"echo\", \"a\\tb\"]\n";
        let processes = processes_of(&bp, tab).unwrap();
        let app = tempfile::tempdir().unwrap();
        write_release(app.path(), &processes).unwrap();
        let release = std::fs::read_to_string(app.path().join(".release")).unwrap();
        assert_eq!(
            release,
            "---\ndefault_process_types:\n  web: \"echo 'a\tb'\"\n"
        );
    }

    #[test]
    fn processes_follow_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let mut bp = buildpack(dir.path(), 10);
        std::fs::write(dir.path().join("launch.toml"), "[[processes]]\ntype = \"web\"\ncommand = [\"./server\", \"--port\"]\nargs = [\"8080\"]\ndefault = true\n").unwrap();
        let processes = read_processes(dir.path(), &bp).unwrap();
        assert_eq!(processes[0].argv(), ["./server", "--port", "8080"]);
        assert!(processes[0].direct);
        bp.api = crate::api::Api { major: 0, minor: 8 };
        let error = read_processes(dir.path(), &bp).unwrap_err().to_string();
        assert!(
            error.contains("`command` must be a string (Buildpack API 0.8)"),
            "{error}"
        );
        std::fs::write(
            dir.path().join("launch.toml"),
            "[[processes]]\ntype = \"web\"\ncommand = \"echo hi && sleep 1\"\n",
        )
        .unwrap();
        let processes = read_processes(dir.path(), &bp).unwrap();
        assert!(!processes[0].direct);
        std::fs::write(
            dir.path().join("launch.toml"),
            "[[processes]]\ntype = \"web\"\ncommand = \"a\"\ndefault = true\n\
             [[processes]]\ntype = \"worker\"\ncommand = \"b\"\ndefault = true\n",
        )
        .unwrap();
        let error = read_processes(dir.path(), &bp).unwrap_err().to_string();
        assert!(
            error.ends_with("launch.toml: process \"worker\" is a second process with default = true; a buildpack may declare one"),
            "{error}"
        );
        std::fs::write(dir.path().join("launch.toml"), "[[processes]\n").unwrap();
        let error = read_processes(dir.path(), &bp).unwrap_err().to_string();
        assert!(
            error.contains("launch.toml: invalid TOML at line 1"),
            "{error}"
        );
    }
}
