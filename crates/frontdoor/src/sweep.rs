//! The start-up sweep of what a killed run (SIGKILL, OOM, power loss) left on disk in the
//! data dir. It runs before the listeners open, so nothing it removes can belong to a live
//! push of this builder (one builder per data dir: the hook socket already assumes it).
//!
//! Per-app push locks are not here on purpose: they live in memory only (`admission::lock`), so a
//! crash cannot leave one behind.

use std::io;
use std::path::{Path, PathBuf};

/// What the sweep removed, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DiskSweep {
    /// Git's quarantine directories of receive-packs that never finished
    /// (`repos/<app>.git/objects/tmp_objdir-incoming-*`, older gits: `incoming-*`).
    pub quarantine_dirs: usize,
    /// Git lock files (`*.lock` in a repository and under its `refs/`): a receive-pack killed
    /// while updating a ref leaves one, and git would refuse every later push to that ref.
    pub git_lock_files: usize,
    /// Half-written git temp files (`objects/pack/tmp_*`, `hooks/*.tmp`).
    pub git_temp_files: usize,
    /// Push workspaces under `DATA_DIR/tmp` (fetched buildpacks, cache archives).
    pub workspaces: usize,
    /// Uploads in progress of the local object store, when it lives in the data dir.
    pub storage_temp_files: usize,
}

/// Sweeps `data_dir`. `work_dir` holds push workspaces; `storage_temp`, if given, is the
/// local object store's temp directory. Failures to remove something are logged and skipped:
/// a leftover must never stop the builder from starting.
pub fn sweep_data_dir(data_dir: &Path, work_dir: &Path, storage_temp: Option<&Path>) -> DiskSweep {
    let mut swept = DiskSweep::default();
    for repo in entries(&data_dir.join("repos")) {
        let is_repo = repo.extension().is_some_and(|ext| ext == "git") && repo.is_dir();
        if is_repo {
            sweep_repo(&repo, &mut swept);
        }
    }
    for entry in entries(work_dir) {
        if remove(&entry) {
            swept.workspaces += 1;
        }
    }
    if let Some(temp) = storage_temp {
        for entry in entries(temp) {
            if remove(&entry) {
                swept.storage_temp_files += 1;
            }
        }
    }
    swept
}

/// Removes the quarantine directories in one repository; returns how many. Call it only
/// while no receive-pack runs there (at start-up, or holding the app's push lock after
/// receive-pack exited: a SIGKILLed receive-pack cannot remove its own).
pub fn remove_quarantines(repo: &Path) -> usize {
    entries(&repo.join("objects"))
        .into_iter()
        .filter(|entry| {
            file_name(entry).is_some_and(|name| {
                name.starts_with("tmp_objdir-incoming-") || name.starts_with("incoming-")
            })
        })
        .filter(|entry| remove(entry))
        .count()
}

fn sweep_repo(repo: &Path, swept: &mut DiskSweep) {
    let objects = repo.join("objects");
    swept.quarantine_dirs += remove_quarantines(repo);
    for entry in entries(&objects.join("pack")) {
        if file_name(&entry).is_some_and(|name| name.starts_with("tmp_")) && remove(&entry) {
            swept.git_temp_files += 1;
        }
    }
    for entry in entries(&repo.join("hooks")) {
        if entry.extension().is_some_and(|ext| ext == "tmp") && remove(&entry) {
            swept.git_temp_files += 1;
        }
    }
    for entry in entries(repo) {
        if is_lock_file(&entry) && remove(&entry) {
            swept.git_lock_files += 1;
        }
    }
    swept.git_lock_files += remove_lock_files_under(&repo.join("refs"), 0);
}

/// `refs/` nests by ref name (`refs/heads/feature/x`); the depth limit keeps a hostile or
/// broken tree from recursing forever.
fn remove_lock_files_under(dir: &Path, depth: usize) -> usize {
    if depth > 16 {
        return 0;
    }
    let mut removed = 0;
    for entry in entries(dir) {
        let Ok(meta) = std::fs::symlink_metadata(&entry) else {
            continue;
        };
        if meta.is_dir() {
            removed += remove_lock_files_under(&entry, depth + 1);
        } else if is_lock_file(&entry) && remove(&entry) {
            removed += 1;
        }
    }
    removed
}

fn is_lock_file(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "lock")
        && std::fs::symlink_metadata(path).is_ok_and(|meta| meta.is_file())
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|name| name.to_str())
}

/// Entries of `dir`; none when it does not exist or cannot be read.
fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(read) => read.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "start-up sweep cannot list a directory");
            Vec::new()
        }
    }
}

/// Removes a file, symlink or directory tree (never following symlinks); logs failures.
fn remove(path: &Path) -> bool {
    let result = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(error) => Err(error),
    };
    match result {
        Ok(()) => true,
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "start-up sweep cannot remove a leftover");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn removes_leftovers_and_keeps_the_rest() {
        let data = tempfile::tempdir().unwrap();
        let root = data.path();
        let repo = root.join("repos/web.git");
        let keep = [
            repo.join("HEAD"),
            repo.join("objects/ab/cdef0123"),
            repo.join("objects/pack/pack-1.pack"),
            repo.join("refs/heads/master"),
            repo.join("hooks/pre-receive"),
            root.join("repos/notes.txt.lock"),
            root.join("storage/home/web:git-1/tar"),
        ];
        let leftovers = [
            repo.join("objects/tmp_objdir-incoming-Ab12Cd/pack/tmp_pack_x"),
            repo.join("objects/incoming-Zz9/12/34"),
            repo.join("objects/pack/tmp_pack_q1"),
            repo.join("hooks/pre-receive.tmp"),
            repo.join("config.lock"),
            repo.join("refs/heads/master.lock"),
            repo.join("refs/heads/team/feature.lock"),
            root.join("tmp/push-abc-0001/buildpacks/x/bin/compile"),
            root.join("storage/.tmp/upload-1"),
        ];
        for path in keep.iter().chain(&leftovers) {
            touch(path);
        }
        let swept = sweep_data_dir(root, &root.join("tmp"), Some(&root.join("storage/.tmp")));
        assert_eq!(
            swept,
            DiskSweep {
                quarantine_dirs: 2,
                git_lock_files: 3,
                git_temp_files: 2,
                workspaces: 1,
                storage_temp_files: 1,
            }
        );
        for path in &keep {
            assert!(path.exists(), "{} was removed", path.display());
        }
        for path in &leftovers {
            assert!(!path.exists(), "{} is still there", path.display());
        }
        assert!(!repo.join("objects/tmp_objdir-incoming-Ab12Cd").exists());
        // A second run finds nothing.
        assert_eq!(
            sweep_data_dir(root, &root.join("tmp"), Some(&root.join("storage/.tmp"))),
            DiskSweep::default()
        );
    }

    #[test]
    fn a_missing_data_dir_is_nothing_to_sweep() {
        let data = tempfile::tempdir().unwrap();
        let missing = data.path().join("nope");
        assert_eq!(
            sweep_data_dir(&missing, &missing.join("tmp"), None),
            DiskSweep::default()
        );
    }
}
