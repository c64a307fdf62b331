// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! One hostile queue cannot monopolise the daemon (issue 12), against the
//! real daemon through the test frontend: queue 0 is flooded with 500
//! requests of the largest cost a request may have (the config space's
//! `max_batch` samples of a 1024-1024-1024 model, 2^27 multiply-accumulates
//! each, all pointing at the same buffers, as a guest may), and meanwhile
//! - queue 1's depth-1 round trip stays within 10x its idle p99,
//! - a hot-swap is announced on the event queue within 100 ms of the load,
//! - a disconnect is followed by a new connection served within 1 s.
//!
//! One test in its own binary: nothing else runs beside it to skew the
//! latencies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nn_core::protocol::{self, ResponseHeader, STATUS_OK};
use nn_core::Model;
use serde_json::json;
use vhost_user_nn::testing::frontend::{Frontend, Options};

mod common;

const DIMS: [usize; 3] = [1024, 1024, 1024];
/// Requests posted on the hostile queue.
const FLOOD: usize = 500;
/// Round trips measured per phase.
const SAMPLES: usize = 300;

fn write_model(dir: &Path, file: &str, m: &Model) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, m.to_bytes()).unwrap();
    p
}

/// p50 and p99 of `SAMPLES` depth-1 NULL round trips on `queue`.
fn p99(fe: &Frontend, queue: usize) -> (Duration, Duration) {
    let mut t: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let start = Instant::now();
            let h = fe.null(queue, 1, DIMS[0] as u32).expect("null answered");
            assert_eq!(h.status, STATUS_OK);
            start.elapsed()
        })
        .collect();
    t.sort();
    (t[SAMPLES / 2], t[SAMPLES * 99 / 100])
}

fn options() -> Options {
    Options {
        queues: 2,
        queue_size: 1024,
        event_queue: true,
        ..Options::default()
    }
}

#[test]
fn a_flood_of_max_cost_requests_on_one_queue_starves_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_model(dir.path(), "a.safetensors", &common::model(&DIMS, 1, "a"));
    let b = write_model(dir.path(), "b.safetensors", &common::model(&DIMS, 2, "b"));
    let daemon = common::daemon()
        .model(&a)
        .queues(2)
        .admin()
        .start()
        .expect("daemon starts");
    let mut fe = Frontend::connect_with(daemon.socket(), options()).expect("frontend connects");
    for _ in 0..4 {
        fe.post_event_buffer().unwrap();
    }
    let cfg = fe.config().unwrap();
    let max_batch = cfg.max_batch;
    assert_eq!(max_batch, protocol::max_batch_for(&DIMS));
    assert!(
        max_batch < protocol::MAX_BATCH,
        "the model's cost caps the batch"
    );

    // Warm up (first-touch page faults on both sides), then measure idle.
    let _ = p99(&fe, 1);
    let (idle50, idle) = p99(&fe, 1);

    // The flood: FLOOD chains of max_batch samples, all on the same buffers.
    let chain = common::max_cost_chain(&fe, 0, DIMS[0], DIMS[2]);
    for _ in 0..FLOOD {
        fe.submit(0, &chain).unwrap();
    }
    // The flood is being served (and each answer is a whole one).
    let first = fe
        .wait_used(0, Duration::from_secs(10))
        .expect("flood served");
    assert_eq!(first.len, chain[1].len);
    let head = fe.read(chain[1].addr, ResponseHeader::SIZE).unwrap();
    let h = ResponseHeader::from_bytes(head[..].try_into().unwrap());
    assert_eq!((h.status, h.num_samples), (STATUS_OK, max_batch));

    let (busy50, busy) = p99(&fe, 1);
    let still_flooded = fe.in_flight(0);
    println!(
        "queue 1 depth-1 NULL p50/p99: idle {idle50:?}/{idle:?}, under the flood \
         {busy50:?}/{busy:?} ({:.1}x); \
         {still_flooded} of {FLOOD} flood requests still queued",
        busy.as_secs_f64() / idle.as_secs_f64()
    );
    assert!(
        still_flooded > FLOOD / 2,
        "the flood was still on while queue 1 was measured ({still_flooded} left)"
    );
    assert!(
        busy <= idle * 10,
        "queue 1's p99 under the flood {busy:?} exceeds 10x its idle {idle:?}"
    );

    // A hot-swap is announced within 100 ms of the load's reply.
    let admin = daemon.admin_socket().unwrap().to_path_buf();
    let reply =
        vhost_user_nn::admin::request(&admin, &json!({"cmd": "load", "path": b}).to_string())
            .expect("admin answers");
    let loaded = Instant::now();
    assert_eq!(reply["ok"], true, "{reply}");
    let generation = reply["generation"].as_u64().unwrap() as u32;
    let deadline = loaded + Duration::from_millis(100);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = fe
            .next_event(left)
            .unwrap_or_else(|e| panic!("no event for generation {generation} within 100 ms: {e}"));
        if ev.is_some_and(|e| e.generation == generation) {
            break;
        }
    }
    println!(
        "hot-swap announced {:?} after the load's reply",
        loaded.elapsed()
    );
    assert!(
        fe.in_flight(0) > FLOOD / 4,
        "the flood was still on at the swap"
    );

    // A disconnect mid-flood: the next connection is served within 1 s.
    let hung_up = Instant::now();
    fe.reconnect().expect("reconnects");
    let h = fe
        .null(0, 1, DIMS[0] as u32)
        .expect("served after the reconnect");
    let gap = hung_up.elapsed();
    println!("disconnect mid-flood to the next connection's first answer: {gap:?}");
    assert_eq!(h.status, STATUS_OK);
    assert!(
        gap < Duration::from_secs(1),
        "next connection served after {gap:?}"
    );
}
