// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Shared by the integration tests: the daemon they run is always the binary
//! cargo built for this test run (`CARGO_BIN_EXE_vhost-user-nn`), never a
//! binary found on disk, so a test cannot pass against a stale daemon.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::PathBuf;

use nn_core::{Activation, Layer, Mlp, Model};

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

/// A deterministic pseudo-random value (a 64-bit LCG, high bits).
pub fn lcg(seed: &mut u64) -> i32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 32) as i32) >> 13
}

/// A deterministic model of the given dims (ReLU between layers).
pub fn model(dims: &[usize], seed: u64, name: &str) -> Model {
    let mut s = seed;
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let (a, b) = (w[0], w[1]);
            let weights = (0..a * b).map(|_| lcg(&mut s) / 4).collect();
            let bias = (0..b).map(|_| lcg(&mut s) / 8).collect();
            let act = if i + 2 == dims.len() {
                Activation::Identity
            } else {
                Activation::Relu
            };
            Layer::new(a, b, weights, bias, act).unwrap()
        })
        .collect();
    Model::new(Mlp::new(layers).unwrap(), name)
}

/// A frontend on `daemon` with `queues` request queues and the event queue,
/// with 4 event buffers posted (QEMU's driver keeps some there).
pub fn frontend_with_events(
    daemon: &Daemon,
    queues: usize,
) -> vhost_user_nn::testing::frontend::Frontend {
    use vhost_user_nn::testing::frontend::{Frontend, Options};
    let fe = Frontend::connect_with(
        daemon.socket(),
        Options {
            queues,
            event_queue: true,
            ..Options::default()
        },
    )
    .expect("frontend connects");
    for _ in 0..4 {
        fe.post_event_buffer().unwrap();
    }
    fe
}
