// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Health through the real daemon (the binary of this build, see
//! `common/mod.rs`) and the test frontend: the admin `health` reply and the
//! config space's status follow the frontend connection, a stuck worker
//! (`--test-mode` and `test-delay`) and a dead one (a frontend whose
//! interrupt eventfd is full, so the worker's signal fails and the library
//! ends its thread).

use std::time::{Duration, Instant};

use nn_core::protocol::{
    RequestHeader, DEVICE_STATUS_ERROR, DEVICE_STATUS_READY, EVENT_CONFIG_CHANGED, OP_PREDICT,
    STATUS_OK,
};
use nn_core::Model;
use serde_json::{json, Value};
use vhost_user_nn::health::STUCK_AFTER;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::{Frontend, Options, TIMEOUT};

mod common;
use common::default_model;

fn health(d: &Daemon) -> Value {
    let h = d
        .admin_request(r#"{"cmd":"health"}"#)
        .expect("admin answers");
    assert_eq!(h["ok"], true, "{h}");
    h
}

/// The check `check` (and `queue` for workers) of a health reply.
fn check<'a>(h: &'a Value, check: &str, queue: Option<u32>) -> &'a Value {
    h["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["check"] == check && queue.is_none_or(|q| c["queue"] == q))
        .unwrap_or_else(|| panic!("no {check} {queue:?} check in {h}"))
}

/// Polls `health` until `cond` holds; panics with the last reply after
/// `timeout`.
fn wait_health(d: &Daemon, timeout: Duration, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let h = health(d);
        if cond(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "health did not get there in {timeout:?}: {h}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(queues: u32, test_mode: bool) -> Daemon {
    start_with(queues, test_mode, true)
}

/// A daemon with the supervisor (the default) or without.
fn start_with(queues: u32, test_mode: bool, supervised: bool) -> Daemon {
    let mut b = common::daemon()
        .model(default_model())
        .queues(queues)
        .admin();
    if test_mode {
        b = b.arg("--test-mode");
    }
    if !supervised {
        b = b.arg("--no-supervisor");
    }
    b.start().expect("daemon starts")
}

fn request(model: &Model, id: u64) -> (RequestHeader, Vec<i32>) {
    let in_dim = model.mlp.input_dim();
    let h = RequestHeader {
        opcode: OP_PREDICT,
        flags: 0,
        id,
        num_samples: 1,
        in_dim: in_dim as u32,
    };
    (h, (0..in_dim as i32).map(|i| i * 4096).collect())
}

#[test]
fn health_follows_the_frontend_connection() {
    // Behind the supervisor the worker's socket is always connected (to
    // the supervisor): the frontend counts once it sets the session up.
    for supervised in [true, false] {
        eprintln!("supervised: {supervised}");
        health_follows_the_frontend_connection_with(supervised);
    }
}

fn health_follows_the_frontend_connection_with(supervised: bool) {
    let d = start_with(2, false, supervised);
    let h = health(&d);
    assert_eq!(h["healthy"], false, "{h}");
    assert_eq!(h["status"], "ready");
    assert_eq!(check(&h, "model", None)["ok"], true);
    assert_eq!(check(&h, "model", None)["state"], "loaded");
    let fe_check = check(&h, "frontend", None);
    assert_eq!(
        (fe_check["ok"].clone(), fe_check["state"].clone()),
        (json!(false), json!("disconnected"))
    );
    for q in 0..2 {
        assert_eq!(check(&h, "worker", Some(q))["state"], "stopped", "{h}");
    }

    let mut fe = Frontend::connect(d.socket(), 2).expect("frontend connects");
    let h = wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
    assert_eq!(check(&h, "frontend", None)["state"], "connected");
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_READY);
    let model = Model::load(&default_model()).unwrap();
    for q in 0..2 {
        let (hdr, x) = request(&model, q as u64);
        fe.start(q, &hdr, &x, model.mlp.output_dim()).unwrap();
        let r = fe.next_response(q, TIMEOUT).unwrap();
        assert_eq!(r.header.unwrap().status, STATUS_OK);
    }
    // (A worker is busy until it returns from the event, just after the
    // response.)
    let h = wait_health(&d, TIMEOUT, |h| {
        (0..2).all(|q| check(h, "worker", Some(q))["state"] == "idle")
    });
    for q in 0..2 {
        let w = check(&h, "worker", Some(q));
        assert_eq!(
            (w["ok"].clone(), w["state"].clone()),
            (json!(true), json!("idle"))
        );
        assert!(
            w["reason"].as_str().unwrap().starts_with("1 requests"),
            "{h}"
        );
    }

    // The frontend goes: unhealthy; it comes back: healthy again.
    fe.hang_up();
    let h = wait_health(&d, TIMEOUT, |h| {
        check(h, "frontend", None)["state"] == "disconnected"
    });
    assert_eq!(h["healthy"], false);
    fe.reconnect().expect("reconnects");
    wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
}

#[test]
fn a_stuck_worker_is_reported_and_the_config_space_says_error() {
    let d = start(2, true);
    let fe = Frontend::connect(d.socket(), 2).expect("frontend connects");
    wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
    let model = Model::load(&default_model()).unwrap();
    // Every request now takes longer than the stuck limit.
    let delay = STUCK_AFTER + Duration::from_secs(3);
    let r = d
        .admin_request(&json!({"cmd": "test-delay", "ms": delay.as_millis() as u64}).to_string())
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let (hdr, x) = request(&model, 7);
    let sent = Instant::now();
    fe.start(1, &hdr, &x, model.mlp.output_dim()).unwrap();

    // Busy at first, then stuck.
    let h = wait_health(&d, TIMEOUT, |h| {
        check(h, "worker", Some(1))["state"] == "stuck"
    });
    assert!(
        sent.elapsed() >= STUCK_AFTER,
        "stuck after {:?}",
        sent.elapsed()
    );
    assert_eq!(
        (h["healthy"].clone(), h["status"].clone()),
        (json!(false), json!("error"))
    );
    let w1 = check(&h, "worker", Some(1));
    assert_eq!(w1["ok"], false);
    assert!(
        w1["reason"]
            .as_str()
            .unwrap()
            .contains("no request finished"),
        "{h}"
    );
    let w0 = check(&h, "worker", Some(0));
    assert_eq!(
        (w0["ok"].clone(), w0["state"].clone()),
        (json!(true), json!("idle"))
    );
    assert_eq!(check(&h, "frontend", None)["ok"], true);
    // The driver sees it in config space.
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_ERROR);

    // The request is answered in the end and the worker recovers.
    d.admin_request(r#"{"cmd":"test-delay","ms":0}"#).unwrap();
    let r = fe.next_response(1, delay + TIMEOUT).unwrap();
    assert_eq!(r.header.unwrap().status, STATUS_OK);
    wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_READY);
}

#[test]
fn a_disconnect_is_seen_while_a_worker_still_holds_a_request() {
    let d = start(1, true);
    let mut fe = Frontend::connect(d.socket(), 1).expect("frontend connects");
    wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
    let model = Model::load(&default_model()).unwrap();
    let delay = Duration::from_secs(3);
    d.admin_request(&json!({"cmd": "test-delay", "ms": delay.as_millis() as u64}).to_string())
        .unwrap();
    let (hdr, x) = request(&model, 1);
    let sent = Instant::now();
    fe.start(0, &hdr, &x, model.mlp.output_dim()).unwrap();
    wait_health(&d, TIMEOUT, |h| {
        check(h, "worker", Some(0))["state"] == "busy"
    });
    fe.hang_up();
    let h = wait_health(&d, TIMEOUT, |h| {
        check(h, "frontend", None)["state"] == "disconnected"
    });
    assert!(
        sent.elapsed() < delay,
        "the disconnect was seen only after the request ended ({:?}): {h}",
        sent.elapsed()
    );
    assert_eq!(h["healthy"], false);
    d.admin_request(r#"{"cmd":"test-delay","ms":0}"#).unwrap();
    fe.reconnect().expect("reconnects");
    wait_health(&d, delay + TIMEOUT, |h| h["healthy"] == true);
}

#[test]
fn a_dead_worker_is_reported_and_announced_until_the_next_connection() {
    let d = start(2, false);
    let mut fe = Frontend::connect_with(
        d.socket(),
        Options {
            queues: 2,
            event_queue: true,
            ..Options::default()
        },
    )
    .expect("frontend connects");
    fe.post_event_buffer().unwrap();
    wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
    let model = Model::load(&default_model()).unwrap();

    // Queue 1's interrupt cannot be raised: its worker's signal fails,
    // which ends the worker thread.
    fe.jam_call(1).unwrap();
    let (hdr, x) = request(&model, 1);
    fe.start(1, &hdr, &x, model.mlp.output_dim()).unwrap();
    let h = wait_health(&d, TIMEOUT, |h| {
        check(h, "worker", Some(1))["state"] == "dead"
    });
    assert_eq!(
        (h["healthy"].clone(), h["status"].clone()),
        (json!(false), json!("error"))
    );
    let reason = check(&h, "worker", Some(1))["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("signalling used queue"), "{h}");
    assert_eq!(check(&h, "worker", Some(0))["ok"], true);
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_ERROR);
    // Thread 0 announced the status change on the event queue.
    let e = fe.next_event(TIMEOUT).unwrap().expect("an event");
    assert_eq!(
        (e.kind, e.generation, e.status),
        (EVENT_CONFIG_CHANGED, 1, DEVICE_STATUS_ERROR)
    );
    // Queue 0 still works.
    let (hdr, x) = request(&model, 2);
    fe.start(0, &hdr, &x, model.mlp.output_dim()).unwrap();
    assert_eq!(
        fe.next_response(0, TIMEOUT).unwrap().header.unwrap().status,
        STATUS_OK
    );

    // A new connection has new workers.
    fe.reconnect().expect("reconnects");
    wait_health(&d, TIMEOUT, |h| h["healthy"] == true);
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_READY);
    let (hdr, x) = request(&model, 3);
    fe.start(1, &hdr, &x, model.mlp.output_dim()).unwrap();
    assert_eq!(
        fe.next_response(1, TIMEOUT).unwrap().header.unwrap().status,
        STATUS_OK
    );
}
