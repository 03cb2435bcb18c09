//! Detection: the order is resolved into groups (composite buildpacks expanded, optional
//! entries marked), each buildpack's `bin/detect` says pass (0), fail (100) or error, and
//! a group passes when one of its build-plan trials resolves: every requirement provided
//! by the same or an earlier buildpack, every provision required by the same or a later
//! one (optional buildpacks that do not fit are left out).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Deserialize;

use crate::descriptor::{Buildpack, Catalog, Reference};
use crate::platform::Platform;
use crate::{files, Error, Result};

/// Nesting of composite buildpacks we follow (a cycle ends here with an error).
const MAX_ORDER_DEPTH: usize = 8;
/// Most groups an order may expand to, and most plan trials per group.
const MAX_GROUPS: usize = 1024;
const MAX_TRIALS: usize = 4096;

/// A buildpack in a group.
#[derive(Debug, Clone)]
pub struct Member {
    pub buildpack: Buildpack,
    pub optional: bool,
}

/// The group that passed, with the build plan.
#[derive(Debug, Clone)]
pub struct Selected {
    pub members: Vec<Buildpack>,
    /// Size of the group before optional buildpacks were left out.
    pub group_size: usize,
    pub plan: Vec<PlanEntry>,
}

/// A required dependency: who provides it and what each requirement asked.
#[derive(Debug, Clone)]
pub struct PlanEntry {
    pub name: String,
    /// Indexes into `Selected::members`.
    pub providers: Vec<usize>,
    pub requires: Vec<Require>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PlanFile {
    #[serde(default)]
    provides: Vec<Provide>,
    #[serde(default)]
    requires: Vec<Require>,
    #[serde(default)]
    or: Vec<Alternative>,
}

#[derive(Debug, Clone, Deserialize)]
struct Provide {
    name: String,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub struct Require {
    pub name: String,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub metadata: toml::Table,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Alternative {
    #[serde(default)]
    provides: Vec<Provide>,
    #[serde(default)]
    requires: Vec<Require>,
}

impl PlanFile {
    fn alternatives(&self) -> Vec<Alternative> {
        let mut all = vec![Alternative {
            provides: self.provides.clone(),
            requires: self.requires.clone(),
        }];
        all.extend(self.or.iter().cloned());
        all
    }
}

/// The groups an order resolves to: the listed buildpacks, each composite expanded into
/// its groups (depth first, left to right).
pub fn resolve_order(catalog: &Catalog) -> Result<Vec<Vec<Member>>> {
    let listed: Vec<Member> = catalog
        .listed
        .iter()
        .map(|buildpack| Member {
            buildpack: buildpack.clone(),
            optional: false,
        })
        .collect();
    expand_group(&listed, catalog, 0)
}

fn expand_group(members: &[Member], catalog: &Catalog, depth: usize) -> Result<Vec<Vec<Member>>> {
    let mut groups: Vec<Vec<Member>> = vec![Vec::new()];
    for member in members {
        let expansions = expand(member, catalog, depth)?;
        let mut next = Vec::new();
        for prefix in &groups {
            for expansion in &expansions {
                let mut group = prefix.clone();
                group.extend(expansion.iter().cloned());
                next.push(group);
            }
        }
        if next.len() > MAX_GROUPS {
            return Err(Error::Buildpack(format!(
                "the order expands to more than {MAX_GROUPS} groups"
            )));
        }
        groups = next;
    }
    Ok(groups)
}

fn expand(member: &Member, catalog: &Catalog, depth: usize) -> Result<Vec<Vec<Member>>> {
    let buildpack = &member.buildpack;
    if buildpack.order.is_empty() {
        return Ok(vec![vec![member.clone()]]);
    }
    let descriptor = buildpack.dir.join(crate::descriptor::DESCRIPTOR);
    if depth >= MAX_ORDER_DEPTH {
        return Err(Error::file(
            &descriptor,
            format!("composite buildpacks nest more than {MAX_ORDER_DEPTH} deep (a cycle?)"),
        ));
    }
    let mut groups = Vec::new();
    for group in &buildpack.order {
        let members = group
            .iter()
            .map(|reference| lookup(catalog, reference, member.optional, &descriptor))
            .collect::<Result<Vec<_>>>()?;
        groups.extend(expand_group(&members, catalog, depth + 1)?);
    }
    Ok(groups)
}

fn lookup(
    catalog: &Catalog,
    reference: &Reference,
    optional: bool,
    descriptor: &Path,
) -> Result<Member> {
    let buildpack = catalog.find(reference).ok_or_else(|| {
        let version = reference.version.as_deref().map(|v| format!("@{v}")).unwrap_or_default();
        Error::file(
            descriptor,
            format!(
                "the order names buildpack {}{version}, which is not among the buildpacks of this build",
                reference.id
            ),
        )
    })?;
    Ok(Member {
        buildpack: buildpack.clone(),
        optional: optional || reference.optional,
    })
}

/// What one `bin/detect` said.
#[derive(Debug, Clone)]
enum Outcome {
    Pass(PlanFile),
    Fail,
    Error(String),
}

/// Runs detection over `groups` in order and returns the first group that passes. Prints
/// what `pack` prints: the group and its buildpacks, or why none passed.
pub fn detect(platform: &Platform, groups: &[Vec<Member>], out: &mut String) -> Result<Selected> {
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut runs = 0usize;
    for group in groups {
        for member in group {
            if let Entry::Vacant(slot) = outcomes.entry(member.buildpack.label()) {
                runs += 1;
                slot.insert(run_detect(platform, &member.buildpack, runs)?);
            }
        }
        if let Some(selected) = try_group(group, &outcomes) {
            out.push_str("===> DETECTING\n");
            let _ = writeln!(
                out,
                "{} of {} buildpacks participating",
                selected.members.len(),
                selected.group_size
            );
            let width = selected
                .members
                .iter()
                .map(|bp| bp.id.len())
                .max()
                .unwrap_or(0);
            for buildpack in &selected.members {
                let _ = writeln!(out, "{:width$} {}", buildpack.id, buildpack.version);
            }
            return Ok(selected);
        }
    }
    out.push_str("===> DETECTING\n");
    let mut errors = Vec::new();
    for (label, outcome) in &outcomes {
        match outcome {
            Outcome::Pass(_) => {
                let _ = writeln!(out, "pass: {label}");
            }
            Outcome::Fail => {
                let _ = writeln!(out, "fail: {label}");
            }
            Outcome::Error(output) => {
                let _ = writeln!(out, "err:  {label}");
                errors.push(format!("{label}: {output}"));
            }
        }
    }
    if errors.is_empty() {
        Err(Error::NoGroup)
    } else {
        Err(Error::Buildpack(format!(
            "detection failed: {}",
            errors.join("; ")
        )))
    }
}

fn run_detect(platform: &Platform, buildpack: &Buildpack, run: usize) -> Result<Outcome> {
    let scratch = platform.scratch_dir.join(format!("detect-{run}"));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let plan_path = scratch.join("plan.toml");
    std::fs::write(&plan_path, "").map_err(|e| Error::io(&plan_path, e))?;
    let env = platform.env_for(
        buildpack,
        &platform.base_env,
        &[("CNB_BUILD_PLAN_PATH", plan_path.display().to_string())],
    );
    let executable = buildpack.dir.join("bin/detect");
    let output = Command::new(&executable)
        .arg(&platform.platform_dir)
        .arg(&plan_path)
        .current_dir(&platform.app_dir)
        .env_clear()
        .envs(env.to_os())
        .stdin(Stdio::null())
        .output();
    // A detect that cannot even start (not executable, a bad interpreter line) is an
    // error of this buildpack, like any other: its group fails, others may pass.
    let output = match output {
        Ok(output) => output,
        Err(error) => return Ok(Outcome::Error(format!("cannot run bin/detect: {error}"))),
    };
    let outcome = match output.status.code() {
        Some(0) => {
            let plan = files::read_toml::<PlanFile>(&plan_path)?.unwrap_or_default();
            check_plan(&plan_path, &plan, buildpack)?;
            Outcome::Pass(plan)
        }
        Some(100) => Outcome::Fail,
        code => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            let status = code.map_or("killed by a signal".to_owned(), |c| {
                format!("exit status {c}")
            });
            let text = text.trim();
            Outcome::Error(if text.is_empty() {
                format!("bin/detect failed ({status})")
            } else {
                format!("bin/detect failed ({status}): {text}")
            })
        }
    };
    Ok(outcome)
}

fn check_plan(path: &Path, plan: &PlanFile, buildpack: &Buildpack) -> Result<()> {
    let names = plan
        .alternatives()
        .into_iter()
        .flat_map(|alt| {
            let provided: Vec<String> = alt.provides.into_iter().map(|p| p.name).collect();
            provided
                .into_iter()
                .chain(alt.requires.into_iter().map(|r| r.name))
        })
        .collect::<Vec<_>>();
    if names.iter().any(String::is_empty) {
        return Err(Error::file(
            path,
            format!(
                "the build plan of {} has an entry without a name",
                buildpack.label()
            ),
        ));
    }
    Ok(())
}

/// The group's result given the detect outcomes: `None` if it does not pass.
fn try_group(group: &[Member], outcomes: &BTreeMap<String, Outcome>) -> Option<Selected> {
    let mut passing: Vec<(&Member, &PlanFile)> = Vec::new();
    for member in group {
        match outcomes.get(&member.buildpack.label()) {
            Some(Outcome::Pass(plan)) => passing.push((member, plan)),
            _ if member.optional => {}
            _ => return None,
        }
    }
    let alternatives: Vec<Vec<Alternative>> = passing
        .iter()
        .map(|(_, plan)| plan.alternatives())
        .collect();
    let mut choice = vec![0usize; passing.len()];
    for _ in 0..MAX_TRIALS {
        let trial: Vec<(&Member, &Alternative)> = passing
            .iter()
            .zip(&choice)
            .enumerate()
            .map(|(i, ((member, _), &c))| (*member, &alternatives[i][c]))
            .collect();
        if let Some(selected) = resolve_trial(&trial, group.len()) {
            return Some(selected);
        }
        // The next trial: the rightmost choice advances first.
        let mut position = choice.len();
        loop {
            if position == 0 {
                return None;
            }
            position -= 1;
            choice[position] += 1;
            if choice[position] < alternatives[position].len() {
                break;
            }
            choice[position] = 0;
        }
    }
    None
}

fn resolve_trial(trial: &[(&Member, &Alternative)], group_size: usize) -> Option<Selected> {
    let mut included: Vec<usize> = (0..trial.len()).collect();
    'check: loop {
        for (position, &index) in included.iter().enumerate() {
            let (member, alt) = trial[index];
            let earlier = &included[..=position];
            let later = &included[position..];
            let unmet_require = alt.requires.iter().any(|require| {
                !earlier
                    .iter()
                    .any(|&j| trial[j].1.provides.iter().any(|p| p.name == require.name))
            });
            let unused_provide = alt.provides.iter().any(|provide| {
                !later
                    .iter()
                    .any(|&j| trial[j].1.requires.iter().any(|r| r.name == provide.name))
            });
            if unmet_require || unused_provide {
                if !member.optional {
                    return None;
                }
                included.remove(position);
                continue 'check;
            }
        }
        break;
    }
    if included.is_empty() {
        return None;
    }
    let members: Vec<Buildpack> = included
        .iter()
        .map(|&i| trial[i].0.buildpack.clone())
        .collect();
    let mut plan: Vec<PlanEntry> = Vec::new();
    for &index in &included {
        for require in &trial[index].1.requires {
            let entry = match plan.iter_mut().find(|entry| entry.name == require.name) {
                Some(entry) => entry,
                None => {
                    let providers = included
                        .iter()
                        .enumerate()
                        .filter(|(_, &j)| {
                            trial[j].1.provides.iter().any(|p| p.name == require.name)
                        })
                        .map(|(position, _)| position)
                        .collect();
                    plan.push(PlanEntry {
                        name: require.name.clone(),
                        providers,
                        requires: Vec::new(),
                    });
                    plan.last_mut()?
                }
            };
            entry.requires.push(require.clone());
        }
    }
    Some(Selected {
        members,
        group_size,
        plan,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Api;
    use crate::env::Env;

    fn member(id: &str, optional: bool) -> Member {
        Member {
            buildpack: Buildpack {
                id: id.into(),
                version: "1.0.0".into(),
                name: None,
                api: Api {
                    major: 0,
                    minor: 10,
                },
                dir: "/bp".into(),
                clear_env: false,
                order: Vec::new(),
            },
            optional,
        }
    }

    #[test]
    fn a_detect_that_cannot_run_is_that_buildpacks_error() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let write_buildpack = |name: &str, detect: &str, mode: u32| {
            let dir = root.path().join("buildpacks").join(name);
            std::fs::create_dir_all(dir.join("bin")).unwrap();
            std::fs::write(dir.join("bin/detect"), detect).unwrap();
            std::fs::set_permissions(
                dir.join("bin/detect"),
                std::fs::Permissions::from_mode(mode),
            )
            .unwrap();
            let mut member = member(name, name == "broken");
            member.buildpack.dir = dir;
            member
        };
        let broken = write_buildpack("broken", "#!/bin/sh\nexit 0\n", 0o644);
        let good = write_buildpack("good", "#!/bin/sh\nexit 0\n", 0o755);
        let platform = Platform {
            app_dir: root.path().to_owned(),
            platform_dir: root.path().join("platform"),
            buildpacks_dir: root.path().join("buildpacks"),
            cache_dir: root.path().join("cache"),
            scratch_dir: root.path().join("scratch"),
            base_env: Env::default(),
            user_env: Env::default(),
            target: Vec::new(),
        };
        let mut out = String::new();
        let selected = detect(&platform, &[vec![broken.clone(), good]], &mut out).unwrap();
        assert_eq!(selected.members.len(), 1, "{out}");
        assert_eq!(selected.members[0].id, "good");

        // Alone and required, it fails detection with the reason.
        let mut required = broken;
        required.optional = false;
        let error = detect(&platform, &[vec![required]], &mut out)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("detection failed: broken@1.0.0: cannot run bin/detect: "),
            "{error}"
        );
    }

    fn pass(toml: &str) -> Outcome {
        Outcome::Pass(toml::from_str(toml).unwrap())
    }

    fn outcomes(list: &[(&str, Outcome)]) -> BTreeMap<String, Outcome> {
        list.iter()
            .map(|(id, o)| (format!("{id}@1.0.0"), o.clone()))
            .collect()
    }

    #[test]
    fn requires_must_be_provided_earlier() {
        let group = [member("a", false), member("b", false)];
        let ok = outcomes(&[
            ("a", pass("[[provides]]\nname = \"node\"\n")),
            (
                "b",
                pass("[[requires]]\nname = \"node\"\n[requires.metadata]\nversion = \"18\"\n"),
            ),
        ]);
        let selected = try_group(&group, &ok).unwrap();
        assert_eq!(selected.members.len(), 2);
        assert_eq!(selected.plan[0].providers, vec![0]);
        assert_eq!(
            selected.plan[0].requires[0].metadata["version"].as_str(),
            Some("18")
        );

        let reversed = outcomes(&[
            ("a", pass("[[requires]]\nname = \"node\"\n")),
            ("b", pass("[[provides]]\nname = \"node\"\n")),
        ]);
        assert!(try_group(&group, &reversed).is_none());
    }

    #[test]
    fn or_alternatives_and_optional_members() {
        let group = [member("a", false), member("b", true), member("c", false)];
        let results = outcomes(&[
            (
                "a",
                pass("[[provides]]\nname = \"x\"\n[[or]]\n[[or.provides]]\nname = \"y\"\n"),
            ),
            ("b", pass("[[provides]]\nname = \"unused\"\n")),
            ("c", pass("[[requires]]\nname = \"y\"\n")),
        ]);
        let selected = try_group(&group, &results).unwrap();
        let ids: Vec<&str> = selected.members.iter().map(|b| b.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
        assert_eq!(selected.group_size, 3);

        let failing = outcomes(&[("a", Outcome::Fail), ("b", pass("")), ("c", pass(""))]);
        assert!(try_group(&group, &failing).is_none());
        let optional_fails = outcomes(&[("a", pass("")), ("b", Outcome::Fail), ("c", pass(""))]);
        assert_eq!(try_group(&group, &optional_fails).unwrap().members.len(), 2);
    }
}
