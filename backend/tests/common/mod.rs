// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by the integration tests: the daemon they run is always the binary
//! cargo built for this test run (`CARGO_BIN_EXE_vhost-user-nn`), never a
//! binary found on disk, so a test cannot pass against a stale daemon.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::PathBuf;

use vhost_user_nn::testing::daemon::{Daemon, DaemonBuilder};

/// The daemon binary of this build.
pub const DAEMON: &str = env!("CARGO_BIN_EXE_vhost-user-nn");

/// A daemon (of this build) to start, with no arguments yet.
pub fn daemon() -> DaemonBuilder {
    Daemon::builder(DAEMON)
}

/// The repository's default model file.
pub fn default_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../weights/default.safetensors")
}
