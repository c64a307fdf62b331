// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the host-only tools of `tests/` share (`nn-frontend-bench`,
//! `nn-supervisor-bench`: the real daemon through a vhost-user test frontend,
//! no QEMU): where the repository's default model is and which daemon binary
//! to run. The tests that boot QEMU guests are in `tests/avocado` (their
//! harness is `tests/avocado/nnlib.py`) and `tests/guest`.

use std::io;
use std::path::{Path, PathBuf};

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The default model file.
pub fn default_model() -> PathBuf {
    repo().join("weights/default.safetensors")
}

/// The daemon binary: `$VIRTIO_NN_DAEMON`, which must be set (to an
/// existing file). Nothing is guessed: cargo does not build the daemon for
/// this crate, so a binary found in target/ could be stale. (The tests that
/// need no guest live in backend/tests and run the binary cargo built.)
pub fn daemon_bin() -> io::Result<PathBuf> {
    let Some(p) = std::env::var_os("VIRTIO_NN_DAEMON") else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "VIRTIO_NN_DAEMON is not set: point it at the vhost-user-nn binary to use \
             (e.g. target/release/vhost-user-nn after cargo build --release)",
        ));
    };
    let p = PathBuf::from(p);
    if !p.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("VIRTIO_NN_DAEMON={}: no such file", p.display()),
        ));
    }
    Ok(p)
}
