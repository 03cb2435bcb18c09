//! The platform side of one build: where things are, and the environment each buildpack
//! executable gets.

use std::path::PathBuf;

use crate::descriptor::Buildpack;
use crate::env::Env;
use crate::{files, Result};

/// Variables that hold search paths: user config is put in front of them instead of
/// replacing them.
const PATH_VARIABLES: [&str; 5] = [
    "PATH",
    "LD_LIBRARY_PATH",
    "LIBRARY_PATH",
    "CPATH",
    "PKG_CONFIG_PATH",
];

#[derive(Debug, Clone)]
pub struct Platform {
    /// The app directory, also every executable's working directory.
    pub app_dir: PathBuf,
    /// `<platform>`: holds `env/`, the app config, one file per variable.
    pub platform_dir: PathBuf,
    /// Where the buildpacks are (one directory each, in order).
    pub buildpacks_dir: PathBuf,
    /// The per-app cache directory the builder restores and saves.
    pub cache_dir: PathBuf,
    /// Scratch space for plans (not kept).
    pub scratch_dir: PathBuf,
    /// The build container's own environment: what every buildpack starts from.
    pub base_env: Env,
    /// The app config (`<platform>/env/`).
    pub user_env: Env,
    /// `CNB_TARGET_*` for buildpacks of API 0.10 and later.
    pub target: Vec<(String, String)>,
}

impl Platform {
    /// The root of the layers of every buildpack: `<app>/.cnb/layers`.
    pub fn layers_root(&self) -> PathBuf {
        self.app_dir.join(crate::CNB_DIR).join("layers")
    }

    pub fn layers_dir(&self, buildpack: &Buildpack) -> PathBuf {
        self.layers_root().join(buildpack.escaped_id())
    }

    /// Reads the app config from `<platform>/env/`.
    pub fn read_user_env(&mut self) -> Result<()> {
        let dir = self.platform_dir.join("env");
        let mut env = Env::default();
        for name in files::sorted_names(&dir)? {
            let path = dir.join(&name);
            if !path.is_file() {
                continue;
            }
            env.set(name, files::read_text(&path)?.unwrap_or_default());
        }
        self.user_env = env;
        Ok(())
    }

    /// What `buildpack`'s executables run with: `env` (the build so far), then the app
    /// config unless the buildpack asks for a clear environment (search paths are
    /// prepended, other variables the build environment already has are kept: the
    /// operator's CA and proxy settings stay), then the `CNB_*` variables of its API.
    pub fn env_for(&self, buildpack: &Buildpack, env: &Env, cnb: &[(&str, String)]) -> Env {
        let mut env = env.clone();
        if !buildpack.clear_env {
            for (name, value) in self.user_env.iter() {
                if name.starts_with("CNB_") {
                    continue;
                }
                if PATH_VARIABLES.contains(&name) {
                    env.prepend_path(name, value);
                } else if self.base_env.get(name).is_none() {
                    env.set(name, value);
                }
            }
        }
        env.set("CNB_BUILDPACK_DIR", buildpack.dir.display().to_string());
        env.set("CNB_PLATFORM_DIR", self.platform_dir.display().to_string());
        for (name, value) in cnb {
            env.set(*name, value.clone());
        }
        if buildpack.api.has_targets() {
            for (name, value) in &self.target {
                env.set(name.clone(), value.clone());
            }
        }
        env
    }

    /// `CNB_TARGET_*` of this machine: linux, its architecture, and the distribution of
    /// `/etc/os-release`.
    pub fn detect_target() -> Vec<(String, String)> {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            other => other,
        };
        let mut target = vec![
            ("CNB_TARGET_OS".to_owned(), "linux".to_owned()),
            ("CNB_TARGET_ARCH".to_owned(), arch.to_owned()),
        ];
        let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        for (key, name) in [
            ("ID", "CNB_TARGET_DISTRO_NAME"),
            ("VERSION_ID", "CNB_TARGET_DISTRO_VERSION"),
        ] {
            if let Some(value) = os_release_value(&release, key) {
                target.push((name.to_owned(), value));
            }
        }
        target
    }
}

fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(
            super::os_release_value(text, "ID").as_deref(),
            Some("debian")
        );
        assert_eq!(
            super::os_release_value(text, "VERSION_ID").as_deref(),
            Some("12")
        );
    }
}
