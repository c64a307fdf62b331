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

/// Writes one OP_PREDICT request of the config space's `max_batch` samples
/// (the most a request may cost) of `in_dim` inputs into `queue`'s scratch
/// area, with room for `out_dim` outputs after it; returns the chain that
/// sends it (post it as often as wanted: the device reads and writes the
/// same buffers).
pub fn max_cost_chain(
    fe: &vhost_user_nn::testing::frontend::Frontend,
    queue: usize,
    in_dim: usize,
    out_dim: usize,
) -> [vhost_user_nn::testing::frontend::Buf; 2] {
    use nn_core::protocol::{RequestHeader, ResponseHeader, OP_PREDICT};
    use vhost_user_nn::testing::frontend::{Buf, SCRATCH_BYTES};
    let max_batch = fe.config().expect("config").max_batch;
    let n = max_batch as usize;
    let hdr = RequestHeader {
        opcode: OP_PREDICT,
        flags: 0,
        id: 7,
        num_samples: max_batch,
        in_dim: in_dim as u32,
    };
    let mut req = hdr.to_bytes().to_vec();
    req.resize(RequestHeader::SIZE + n * in_dim * 4, 0x11);
    let resp_len = ResponseHeader::SIZE + n * out_dim * 4;
    let req_at = fe.scratch(queue);
    let resp_at = req_at + (req.len() as u64).next_multiple_of(4096);
    assert!(
        resp_at + resp_len as u64 <= req_at + SCRATCH_BYTES,
        "a max-cost request fits the scratch area"
    );
    fe.write(req_at, &req).expect("guest memory");
    [
        Buf::r(req_at, req.len() as u32),
        Buf::w(resp_at, resp_len as u32),
    ]
}

/// A daemon serving the default model and a frontend with queues of
/// `queue_size` entries on it.
pub fn default_daemon_and_frontend(
    queue_size: u16,
) -> (Daemon, vhost_user_nn::testing::frontend::Frontend) {
    use vhost_user_nn::testing::frontend::{Frontend, Options};
    let daemon = daemon()
        .model(default_model())
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect_with(
        daemon.socket(),
        Options {
            queue_size,
            ..Options::default()
        },
    )
    .expect("frontend connects");
    (daemon, fe)
}

/// Copies of the daemon binary and of the default model that any user may
/// run and read, in a temporary directory any user may enter (kept as long
/// as the returned guard): for tests that run the daemon, or let it start
/// its workers, as another uid. The checkout itself may sit under a
/// directory only its owner can enter. Returns (guard, binary, model).
pub fn world_accessible_daemon() -> (tempfile::TempDir, PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let mode = |p: &std::path::Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    mode(dir.path(), 0o755);
    let bin = dir.path().join("vhost-user-nn");
    std::fs::copy(DAEMON, &bin).expect("copy the daemon");
    mode(&bin, 0o755);
    let model = dir.path().join("default.safetensors");
    std::fs::copy(default_model(), &model).expect("copy the model");
    mode(&model, 0o644);
    (dir, bin, model)
}

/// Whether a test that switches to another uid must be skipped: only when
/// not root and `VIRTIO_NN_ALLOW_SKIP_ROOT` is set (said on stderr);
/// without root and without the opt-out the test fails.
pub fn skip_unless_root(what: &str) -> bool {
    if rustix::process::geteuid().as_raw() == 0 {
        return false;
    }
    if std::env::var_os("VIRTIO_NN_ALLOW_SKIP_ROOT").is_some() {
        eprintln!("\n*** SKIPPED (VIRTIO_NN_ALLOW_SKIP_ROOT): {what} needs root ***\n");
        return true;
    }
    panic!("{what} needs root (set VIRTIO_NN_ALLOW_SKIP_ROOT=1 to skip it)");
}
