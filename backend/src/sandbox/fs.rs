// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Landlock: the worker's file access after start-up.
//!
//! After [`confine_reads`] the calling thread, and every thread it starts
//! later, may read files only under the model directories, and may create
//! or remove only socket files in the directories of the sockets it owns
//! (`--no-supervisor`: its vhost-user and admin sockets). Landlock is
//! per thread and inherited by new threads only, so this runs before the
//! daemon starts any thread (the admin, watch and signal threads read and
//! remove files). Best effort: a kernel without Landlock (or with an older
//! ABI) gets what it supports, and that is logged.
//!
//! The seccomp filter already refuses opening for writing; Landlock adds
//! *where* a read-only open may go.

use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use landlock::{
    Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    Scope, ABI,
};
use log::{info, warn};

/// The newest Landlock ABI this code asks for (best effort below it).
const LANDLOCK_ABI: ABI = ABI::V6;

/// The directories reads are confined to, once confined.
static CONFINED_TO: OnceLock<Vec<PathBuf>> = OnceLock::new();

/// Confines the calling thread (and the threads it starts later) to
/// reading under `dirs` and to making and removing socket files in
/// `socket_dirs`. Nothing is confined if `dirs` is empty.
pub fn confine_reads(dirs: &[PathBuf], socket_dirs: &[PathBuf]) -> Result<(), String> {
    if dirs.is_empty() {
        info!("landlock: no model directory (--model or --allow-model-dir): reads not confined");
        return Ok(());
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let n = tasks.count();
        if n > 1 {
            warn!(
                "landlock: {n} threads already run; only this one and its new threads are confined"
            );
        }
    }
    let err = |e: landlock::RulesetError| format!("landlock: {e}");
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .scope(Scope::from_all(LANDLOCK_ABI))
        .map_err(err)?
        .create()
        .map_err(err)?;
    for d in dirs {
        let fd = PathFd::new(d).map_err(|e| format!("--allow-model-dir {}: {e}", d.display()))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::from_read(LANDLOCK_ABI)))
            .map_err(err)?;
    }
    for d in socket_dirs {
        let fd = PathFd::new(d).map_err(|e| format!("{}: {e}", d.display()))?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(
                fd,
                AccessFs::MakeSock | AccessFs::RemoveFile,
            ))
            .map_err(err)?;
    }
    let status = ruleset.restrict_self().map_err(err)?;
    let list = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match status.ruleset {
        RulesetStatus::FullyEnforced => info!("landlock: reads confined to {list}"),
        RulesetStatus::PartiallyEnforced => {
            info!("landlock: reads confined to {list} (partly: an older Landlock ABI)")
        }
        RulesetStatus::NotEnforced => {
            warn!("landlock: not available in this kernel; reads are NOT confined to {list}");
            return Ok(());
        }
    }
    let _ = CONFINED_TO.set(dirs.to_vec());
    Ok(())
}

/// `path` without `.` and with `..` applied, lexically (no file system
/// access: the daemon may not be able to look).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// Whether a model at `path` may be read: `Ok` unless reads are confined
/// and `path` is outside the allowed directories, with an answer that says
/// so (Landlock's own refusal would be a bare "permission denied"). A
/// symbolic link inside an allowed directory pointing outside passes here
/// and is refused by Landlock.
pub fn may_read(path: &Path) -> Result<(), String> {
    let Some(dirs) = CONFINED_TO.get() else {
        return Ok(());
    };
    let p = normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    if dirs.iter().any(|d| p.starts_with(normalize(d))) {
        return Ok(());
    }
    let list = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Err(format!(
        "{}: outside the directories this daemon may read models from ({list}); \
         start it with --allow-model-dir to allow another",
        path.display()
    ))
}

/// `error`, a failed load of `path`, with a hint when reads are confined
/// and it is a refusal (e.g. a symbolic link out of the allowed
/// directories, which [`may_read`] cannot see).
pub fn explain(error: String) -> String {
    match CONFINED_TO.get() {
        Some(dirs) if error.contains("os error 13") => format!(
            "{error} (this daemon may read models only under {}, after symbolic links)",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(normalize(Path::new("/a/./b/../c")), Path::new("/a/c"));
        assert_eq!(normalize(Path::new("/a/../../etc")), Path::new("/etc"));
        assert!(!normalize(Path::new("/m/../etc/x")).starts_with("/m"));
    }
}
