// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `--watch`: reload the model when its file changes (like Triton's POLL
//! model-control mode), through the same validation and swap as the admin
//! `load` command.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use log::{info, warn};

use crate::admin::Admin;

/// What identifies a version of the file: inode (a rename over it), size and
/// modification time.
fn stamp(path: &PathBuf) -> Option<(u64, u64, i64, i64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Polls `path` every `interval` on a background thread. A change is loaded
/// once the file has looked the same for one more interval, so a file still
/// being written is not loaded half-way (a refused load is retried only when
/// the file changes again). Loads are serialised with the admin `load`s: a
/// change seen while one runs is loaded after it.
pub fn spawn(admin: Arc<Admin>, path: PathBuf, interval: Duration) -> std::io::Result<()> {
    let mut loaded = stamp(&path);
    info!("watching {} every {interval:?}", path.display());
    thread::Builder::new().name("watch".into()).spawn(move || {
        let mut seen = loaded;
        loop {
            thread::sleep(interval);
            let now = stamp(&path);
            if now.is_none() || now == loaded {
                seen = now;
                continue;
            }
            if now != seen {
                // Changed since the last poll: wait until it settles.
                seen = now;
                continue;
            }
            // Through the admin's load lock: while an admin `load` runs,
            // try again at the next poll (never wait: a load started later
            // must not be overtaken, nor this thread stuck behind a slow one).
            let Some(reply) = admin.try_load(&path) else {
                continue;
            };
            loaded = now;
            if reply["ok"] != true {
                warn!("watch: {} not loaded: {}", path.display(), reply["error"]);
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::NnDevice;
    use crate::stats::Stats;
    use nn_core::fixed::ONE;
    use nn_core::{Activation, Layer, Mlp, Model};
    use std::time::Instant;

    fn model(in_dim: usize) -> Model {
        let l = Layer::new(in_dim, 1, vec![ONE; in_dim], vec![0], Activation::Identity).unwrap();
        Model::new(Mlp::new(vec![l]).unwrap(), "w")
    }

    /// Waits (bounded) until `cond` holds.
    fn eventually(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// A temporary directory with a model file (input width 2), and a device,
    /// its stats and an admin serving it.
    fn serving_a_file() -> (
        tempfile::TempDir,
        std::path::PathBuf,
        Arc<NnDevice>,
        Arc<Stats>,
        Arc<Admin>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        std::fs::write(&path, model(2).to_bytes()).unwrap();
        let dev = Arc::new(NnDevice::new(model(2), path.clone(), 1).unwrap());
        let stats = Arc::new(Stats::new(1));
        let admin = Arc::new(Admin::new(
            dev.clone(),
            stats.clone(),
            nn_core::kernels::Kernel::Auto,
        ));
        (dir, path, dev, stats, admin)
    }

    #[test]
    fn reloads_changed_files_and_refuses_bad_ones() {
        let (dir, path, dev, stats, admin) = serving_a_file();
        spawn(admin, path.clone(), Duration::from_millis(10)).unwrap();

        // Replace the file (rename over it, as deployment tools do).
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, model(7).to_bytes()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(eventually(|| dev.current().generation == 2), "not reloaded");
        assert_eq!(dev.current().model.as_ref().unwrap().mlp.input_dim(), 7);

        // A broken file is refused; the model keeps serving.
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            eventually(|| stats.summary().swap_failures == 1),
            "not refused"
        );
        assert_eq!(dev.current().generation, 2);
        assert_eq!(dev.current().model.as_ref().unwrap().mlp.input_dim(), 7);
    }

    #[test]
    fn a_change_seen_during_an_admin_load_is_loaded_after_it() {
        let (dir, path, dev, stats, admin) = serving_a_file();
        // An admin load in progress...
        let load = admin.hold_load_lock();
        spawn(admin.clone(), path.clone(), Duration::from_millis(10)).unwrap();
        let tmp = dir.path().join("new");
        std::fs::write(&tmp, model(4).to_bytes()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        // ... holds the watcher back (many polls), and a second load too.
        thread::sleep(Duration::from_millis(300));
        assert_eq!(dev.current().generation, 1);
        let r = admin.handle(crate::admin::Request::Load { path: path.clone() });
        assert_eq!(r["error"], crate::admin::BUSY, "{r}");
        assert_eq!(stats.summary().swap_failures, 0);
        drop(load);
        // Then the change is loaded, not forgotten.
        assert!(eventually(|| dev.current().generation == 2), "not reloaded");
        assert_eq!(dev.current().model.as_ref().unwrap().mlp.input_dim(), 4);
    }
}
