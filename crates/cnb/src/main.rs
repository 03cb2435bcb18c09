//! `deis-cnb build`: the Cloud Native Buildpacks driver inside the build container (the
//! classic driver `bin/build` hands over to it when the push selected CNBs). Detects over
//! the buildpacks in the buildpacks directory, builds the passing group, and leaves the
//! slug tree in the app directory.
//!
//! Paths (environment, with the build container's defaults): `CNB_APP_DIR` (/app),
//! `CNB_PLATFORM_DIR` (/build, whose env/ is the app config), `BUILDPACKS_DIR`
//! (/build/buildpacks), `CACHE_DIR` (/build/cache).
//!
//! Exit status: 0 built, 1 failed, 2 no group passed detection.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use deis_cnb::descriptor::Catalog;
use deis_cnb::env::Env;
use deis_cnb::platform::Platform;
use deis_cnb::{build, detect, Error};

fn path_setting(name: &str, default: &str) -> PathBuf {
    std::env::var_os(name)
        .filter(|value| !value.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args != ["build"] {
        eprintln!("usage: deis-cnb build");
        return ExitCode::from(2);
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::NoGroup) => {
            println!("ERROR: No buildpack groups passed detection.");
            println!(" !     No buildpack group passed detection: check that the app is one these buildpacks build.");
            ExitCode::from(2)
        }
        Err(error) => {
            println!(" !     {error}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), Error> {
    let scratch = std::env::temp_dir().join(format!("deis-cnb-{}", std::process::id()));
    let mut base_env = Env::from_process();
    // Ours, not the buildpacks'.
    for name in [
        "CNB_APP_DIR",
        "CNB_PLATFORM_DIR",
        "BUILDPACKS_DIR",
        "CACHE_DIR",
        "BUILDPACK_SELECTION",
        "ENV_DIR",
        "BUILD_DIR",
    ] {
        base_env.remove(name);
    }
    let mut platform = Platform {
        app_dir: path_setting("CNB_APP_DIR", "/app"),
        platform_dir: path_setting("CNB_PLATFORM_DIR", "/build"),
        buildpacks_dir: path_setting("BUILDPACKS_DIR", "/build/buildpacks"),
        cache_dir: path_setting("CACHE_DIR", "/build/cache"),
        scratch_dir: scratch.clone(),
        base_env,
        user_env: Env::default(),
        target: Platform::detect_target(),
    };
    platform.read_user_env()?;
    // Only what the buildpacks of this build write: never what the app's source carries.
    deis_cnb::files::remove(&platform.app_dir.join(deis_cnb::CNB_DIR))?;
    let result = build_app(&platform);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn build_app(platform: &Platform) -> Result<(), Error> {
    let catalog = Catalog::load(&platform.buildpacks_dir)?;
    if catalog.listed.is_empty() {
        return Err(Error::Buildpack("no buildpack was given".to_owned()));
    }
    let groups = detect::resolve_order(&catalog)?;
    let mut report = String::new();
    let detected = detect::detect(platform, &groups, &mut report);
    print!("{report}");
    let selected = detected?;
    let mut stdout = std::io::stdout();
    let metadata = build::build(platform, &selected, &mut stdout)?;
    for process in &metadata.processes {
        let default = if process.default { " (default)" } else { "" };
        println!(
            "Process '{}'{default}: {}",
            process.kind,
            process.command_line()
        );
    }
    let _ = stdout.flush();
    Ok(())
}
