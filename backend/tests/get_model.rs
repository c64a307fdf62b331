// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `GET_MODEL` through the real daemon (supervisor and worker): the file it
//! serves is the canonical form of the loaded model, whatever form the
//! loaded file had; config space's size and CRC-32C describe it; a hot-swap
//! between chunks is answered `MODEL_CHANGED`; and a worker restarted under
//! the same generation serves the same bytes.

mod common;

use std::time::{Duration, Instant};

use nn_core::model::crc32c;
use nn_core::protocol::{DeviceConfig, STATUS_MODEL_CHANGED, STATUS_OK};
use nn_core::Model;
use serde_json::json;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::Frontend;

const STEP: u32 = 1000;

/// The served file of generation `cfg.generation`, read in chunks.
fn fetch(fe: &Frontend, cfg: &DeviceConfig) -> Vec<u8> {
    let mut file = Vec::new();
    while file.len() < cfg.model_size as usize {
        let at = file.len() as u32;
        let (h, chunk) = fe
            .get_model(0, cfg.generation, at, STEP)
            .expect("an answer");
        assert_eq!(
            (h.status, h.generation),
            (STATUS_OK, cfg.generation),
            "chunk at {at}"
        );
        let (c, bytes) = chunk.unwrap();
        assert_eq!(
            (c.model_size, c.model_crc32c, c.offset),
            (cfg.model_size, cfg.model_crc32c, at)
        );
        file.extend(bytes);
    }
    file
}

/// The same model file with spaces in its JSON header (any safetensors
/// reader takes it; it is not the canonical form).
fn respaced(file: &[u8]) -> Vec<u8> {
    let n = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + n]).unwrap();
    let mut header = header.trim_end().replace("\"dtype\":", "\"dtype\": ");
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&file[8 + n..]);
    out
}

fn worker_pid(d: &Daemon) -> Option<u64> {
    d.admin_request(&json!({"cmd": "status"}).to_string())
        .ok()
        .and_then(|r| r["pid"].as_u64())
}

#[test]
fn the_served_file_is_canonical_swaps_are_seen_and_restarts_keep_it() {
    let loaded = std::fs::read(common::default_model()).unwrap();
    let model = Model::from_bytes(&loaded).unwrap();
    let canonical = model.to_bytes();
    let dir = tempfile::tempdir().unwrap();
    let daemon = common::daemon()
        .model(common::default_model())
        .arg("--allow-model-dir")
        .arg(common::default_model().parent().unwrap())
        .arg("--allow-model-dir")
        .arg(dir.path())
        .admin()
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect(daemon.socket(), 1).expect("frontend connects");

    let cfg = fe.config().unwrap();
    assert_eq!(
        (cfg.generation, cfg.model_size, cfg.model_crc32c),
        (1, canonical.len() as u32, crc32c(&canonical))
    );
    let file = fetch(&fe, &cfg);
    assert_eq!(file, canonical);
    assert!(file.len() > 2 * STEP as usize, "read in several chunks");

    // A load (of a file in another form) between two chunks: the next
    // chunk of generation 1 is refused and names generation 2, which config
    // space now describes; its file is the model's canonical form.
    let other = common::model(&[16, 8, 4], 9, "other");
    let path = dir.path().join("other.safetensors");
    let on_disk = respaced(&other.to_bytes());
    assert_ne!(on_disk, other.to_bytes());
    std::fs::write(&path, &on_disk).unwrap();
    let (h, _) = fe.get_model(0, 1, 0, STEP).unwrap();
    assert_eq!(h.status, STATUS_OK);
    let r = daemon
        .admin_request(&json!({"cmd": "load", "path": path}).to_string())
        .unwrap();
    assert_eq!(r["generation"], 2, "{r}");
    let (h, chunk) = fe.get_model(0, 1, STEP, STEP).unwrap();
    assert_eq!((h.status, h.generation), (STATUS_MODEL_CHANGED, 2));
    assert!(chunk.is_none());
    let cfg2 = fe.config().unwrap();
    let want = other.to_bytes();
    assert_eq!(
        (cfg2.generation, cfg2.model_size, cfg2.model_crc32c),
        (2, want.len() as u32, crc32c(&want))
    );
    assert_eq!(fetch(&fe, &cfg2), want);

    // A new worker serves generation 2 with the same bytes.
    let pid = worker_pid(&daemon).expect("a worker pid");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t = Instant::now();
    while worker_pid(&daemon) == Some(pid) {
        assert!(t.elapsed() < Duration::from_secs(10), "no new worker");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Until the new worker has loaded the model, config space says ERROR
    // (the supervisor's view of a worker that is starting).
    let t = Instant::now();
    loop {
        let cfg = fe.config().unwrap();
        if cfg == cfg2 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the new worker never served generation 2: {cfg:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(fetch(&fe, &cfg2), want);
}
