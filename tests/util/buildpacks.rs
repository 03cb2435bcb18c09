//! Buildpack fixtures, published as git repositories and tarballs by a [`StaticServer`].

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::servers::StaticServer;

pub fn buildpack_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/buildpacks")
        .join(name)
}

impl StaticServer {
    /// Publishes `fixtures/buildpacks/<fixture>` as a git repository `<name>.git` (branch
    /// `main`, one commit); returns the working copy to add commits, branches and tags.
    pub fn publish_buildpack_repo(&self, name: &str, fixture: &str) -> BuildpackRepo {
        let work = tempfile::tempdir().unwrap();
        let status = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", buildpack_fixture(fixture).display()))
            .arg(work.path())
            .status()
            .unwrap();
        assert!(status.success());
        let repo = BuildpackRepo {
            work,
            bare: self.root.path().join(format!("{name}.git")),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo.commit("initial");
        repo.git(&[
            "clone",
            "-q",
            "--bare",
            ".",
            &repo.bare.display().to_string(),
        ]);
        repo.git(&["remote", "add", "origin", &repo.bare.display().to_string()]);
        repo.refresh();
        repo
    }

    /// Publishes `fixtures/buildpacks/<fixture>` as `<name>.tgz` with one top-level directory
    /// (as GitHub archives have).
    pub fn publish_buildpack_tarball(&self, name: &str, fixture: &str) {
        let status = Command::new("tar")
            .arg("-czf")
            .arg(self.root.path().join(format!("{name}.tgz")))
            .arg("-C")
            .arg(buildpack_fixture(fixture).parent().unwrap())
            .arg(format!("--transform=s,^{fixture},{name}-1.0,"))
            .arg(fixture)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// The working copy of a buildpack repository served by [`StaticServer`].
pub struct BuildpackRepo {
    pub work: TempDir,
    bare: PathBuf,
}

impl BuildpackRepo {
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(self.work.path())
            .args(args)
            .env("GIT_AUTHOR_NAME", "Buildpack")
            .env("GIT_AUTHOR_EMAIL", "bp@example.com")
            .env("GIT_COMMITTER_NAME", "Buildpack")
            .env("GIT_COMMITTER_EMAIL", "bp@example.com")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", self.work.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Commits everything; returns the commit id.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    pub fn write(&self, path: &str, content: &str) {
        std::fs::write(self.work.path().join(path), content).unwrap();
    }

    /// Pushes all branches and tags to the served bare repository.
    pub fn publish(&self) {
        self.git(&["push", "-q", "--all", "origin"]);
        self.git(&["push", "-q", "--tags", "origin"]);
        self.refresh();
    }

    /// Dumb HTTP needs the info/refs and objects/info/packs files.
    fn refresh(&self) {
        let out = Command::new("git")
            .arg("-C")
            .arg(&self.bare)
            .arg("update-server-info")
            .output()
            .unwrap();
        assert!(out.status.success());
    }
}
