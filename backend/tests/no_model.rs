// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A daemon started without `--model`: the config space says NO_MODEL,
//! requests are refused with `STATUS_NO_MODEL`, health says so, and the
//! first admin `load` makes it serve (kept across a worker restart).

mod common;

use std::time::{Duration, Instant};

use nn_core::protocol::{DEVICE_STATUS_NO_MODEL, DEVICE_STATUS_READY, STATUS_NO_MODEL, STATUS_OK};
use serde_json::json;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::Frontend;

fn admin(d: &Daemon, req: serde_json::Value) -> serde_json::Value {
    d.admin_request(&req.to_string()).expect("admin answers")
}

#[test]
fn without_a_model_requests_are_refused_until_a_load_that_survives_a_worker_kill() {
    let dir = tempfile::tempdir().unwrap();
    let m = common::model(&[16, 32, 4], 5, "first");
    let path = dir.path().join("first.safetensors");
    std::fs::write(&path, m.to_bytes()).unwrap();
    let daemon = common::daemon().admin().start().expect("daemon starts");
    let fe = Frontend::connect(daemon.socket(), 1).expect("frontend connects");

    let cfg = fe.config().unwrap();
    assert_eq!(
        (cfg.status, cfg.num_layers, cfg.generation),
        (DEVICE_STATUS_NO_MODEL, 0, 0)
    );
    let x: Vec<i32> = (0..16).map(|i| i * 3000 - 20000).collect();
    let (h, y) = fe.predict_dims(0, 1, &x, 1, 4).expect("an answer");
    assert_eq!((h.status, y.len()), (STATUS_NO_MODEL, 0));
    let health = admin(&daemon, json!({"cmd": "health"}));
    assert_eq!(health["healthy"], false, "{health}");
    let model_check = health["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "model")
        .cloned()
        .unwrap();
    assert_eq!(
        (&model_check["state"], &model_check["ok"]),
        (&json!("none"), &json!(false))
    );
    let status = admin(&daemon, json!({"cmd": "status"}));
    assert_eq!(
        (&status["model"], &status["generation"]),
        (&json!(null), &json!(0))
    );

    let r = admin(&daemon, json!({"cmd": "load", "path": path}));
    assert_eq!(
        (&r["ok"], &r["generation"]),
        (&json!(true), &json!(1)),
        "{r}"
    );
    let cfg = fe.config().unwrap();
    assert_eq!(
        (cfg.status, cfg.generation, cfg.input_dim()),
        (DEVICE_STATUS_READY, 1, 16)
    );
    let want = m.mlp.predict(&x).unwrap();
    let (h, y) = fe.predict_dims(0, 2, &x, 1, 4).expect("an answer");
    assert_eq!((h.status, h.generation, &y), (STATUS_OK, 1, &want));
    assert_eq!(admin(&daemon, json!({"cmd": "health"}))["healthy"], true);

    // The loaded model was handed to the supervisor: a new worker serves it.
    let pid = status["pid"].as_u64().unwrap() as i32;
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let t = Instant::now();
    while admin_pid(&daemon) == Some(pid as u64) {
        assert!(t.elapsed() < Duration::from_secs(10), "no new worker");
        std::thread::sleep(Duration::from_millis(5));
    }
    let (h, y) = fe.predict_dims(0, 3, &x, 1, 4).expect("an answer");
    assert_eq!((h.status, h.generation, &y), (STATUS_OK, 1, &want));
}

fn admin_pid(d: &Daemon) -> Option<u64> {
    d.admin_request(&json!({"cmd": "status"}).to_string())
        .ok()
        .and_then(|r| r["pid"].as_u64())
}
