// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Load with hot-swaps, against the real daemon through the test frontend:
//! four request queues, one frontend thread each, pipelined requests, while
//! the admin socket swaps the model 200 times (alternating two models of
//! the same shape with different weights, and once a model of other dims).
//! Every request must be answered, and every answer must be exactly what the
//! model of the generation it names computes.
//!
//! The daemon is the binary cargo built for this test run (see
//! `common/mod.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nn_core::protocol::{RequestHeader, EVENT_CONFIG_CHANGED, STATUS_BAD_DIMS, STATUS_OK};
use nn_core::Model;
use serde_json::json;
use vhost_user_nn::testing::frontend::TIMEOUT;

mod common;

const QUEUES: usize = 4;
const SWAPS: usize = 200;
/// Requests in flight per queue.
const DEPTH: usize = 4;
/// Hard bound on the traffic phase.
const MAX_RUN: Duration = Duration::from_secs(60);

fn write_model(dir: &Path, file: &str, m: &Model) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, m.to_bytes()).unwrap();
    p
}

/// One answered request, checked after the run (the generation → model map
/// is complete only then).
struct Answer {
    generation: u32,
    status: u32,
    in_dim: usize,
    num_samples: u32,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
}

#[test]
fn four_queues_under_200_hot_swaps_lose_nothing_and_answer_per_generation() {
    let dir = tempfile::tempdir().unwrap();
    let models = [
        common::model(&[16, 32, 4], 1, "a"),
        common::model(&[16, 32, 4], 2, "b"),
        common::model(&[8, 12, 3], 3, "c"),
    ];
    assert_ne!(models[0].mlp, models[1].mlp);
    let paths: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .zip(&models)
        .map(|(n, m)| write_model(dir.path(), &format!("{n}.safetensors"), m))
        .collect();
    let daemon = common::daemon()
        .model(&paths[0])
        .queues(QUEUES as u32)
        .admin()
        .start()
        .expect("daemon starts");
    let admin = daemon.admin_socket().unwrap().to_path_buf();
    // The first swaps are announced on the posted event buffers.
    let fe = common::frontend_with_events(&daemon, QUEUES);
    assert_eq!(fe.config().unwrap().generation, 1);

    // Generation -> index into `models`. Generation 1 is the start model.
    let gens: Mutex<HashMap<u32, usize>> = Mutex::new(HashMap::from([(1, 0)]));
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let max_out = 4;

    let (answers, sent): (Vec<Vec<Answer>>, Vec<usize>) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..QUEUES)
            .map(|q| {
                let fe = &fe;
                let done = &done;
                s.spawn(move || {
                    let mut seed = 1000 + q as u64;
                    let mut answers = Vec::new();
                    let mut pending: HashMap<u64, (usize, u32, Vec<i32>)> = HashMap::new();
                    let mut next_id = (q as u64) << 32;
                    let mut sent = 0usize;
                    loop {
                        let stop = done.load(Ordering::Acquire) || started.elapsed() > MAX_RUN;
                        while !stop && pending.len() < DEPTH {
                            // Mostly 16-wide requests, one in five 8-wide.
                            let in_dim = if next_id.is_multiple_of(5) { 8 } else { 16 };
                            let n = 1 + (next_id % 7) as u32;
                            let inputs: Vec<i32> = (0..n as usize * in_dim)
                                .map(|_| common::lcg(&mut seed))
                                .collect();
                            let h = RequestHeader {
                                opcode: nn_core::protocol::OP_PREDICT,
                                flags: 0,
                                id: next_id,
                                num_samples: n,
                                in_dim: in_dim as u32,
                            };
                            fe.start(q, &h, &inputs, n as usize * max_out).unwrap();
                            pending.insert(next_id, (in_dim, n, inputs));
                            next_id += 1;
                            sent += 1;
                        }
                        if pending.is_empty() {
                            break;
                        }
                        let r = fe.next_response(q, TIMEOUT).unwrap_or_else(|e| {
                            panic!("queue {q}: a request was not answered: {e}")
                        });
                        let h = r.header.expect("a response header");
                        assert_eq!(h.id, r.request_id, "queue {q}: id echoed");
                        let (in_dim, num_samples, inputs) =
                            pending.remove(&h.id).expect("answer to a pending request");
                        answers.push(Answer {
                            generation: h.generation,
                            status: h.status,
                            in_dim,
                            num_samples,
                            inputs,
                            outputs: r.outputs,
                        });
                    }
                    (answers, sent)
                })
            })
            .collect();

        // The swapper: 200 loads, the 100th of the other dims.
        for i in 0..SWAPS {
            let which = if i == SWAPS / 2 { 2 } else { (i + 1) % 2 };
            let line = json!({"cmd": "load", "path": paths[which]}).to_string();
            let reply = vhost_user_nn::admin::request(&admin, &line).expect("admin answers");
            assert_eq!(reply["ok"], true, "{reply}");
            let g = reply["generation"].as_u64().unwrap() as u32;
            assert!(gens.lock().unwrap().insert(g, which).is_none());
            // Let some traffic through each generation.
            std::thread::sleep(Duration::from_micros(500));
        }
        done.store(true, Ordering::Release);
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        if results.iter().any(|r| r.is_err()) {
            let log = daemon.log();
            let bad: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains(" INFO "))
                .take(30)
                .collect();
            panic!(
                "a queue failed (see above); daemon warnings and errors:\n{}",
                bad.join("\n")
            );
        }
        results.into_iter().map(|r| r.unwrap()).unzip()
    });
    assert!(started.elapsed() < MAX_RUN, "the run hit its time bound");

    // Check every answer against the model of its generation.
    let gens = gens.into_inner().unwrap();
    assert_eq!(gens.len(), SWAPS + 1);
    let mut per_gen_ok: HashMap<u32, usize> = HashMap::new();
    let mut total = 0;
    for (q, list) in answers.iter().enumerate() {
        assert_eq!(list.len(), sent[q], "queue {q}: every request answered");
        total += list.len();
        for a in list {
            let m = &models[*gens
                .get(&a.generation)
                .unwrap_or_else(|| panic!("queue {q}: unknown generation {}", a.generation))];
            if a.in_dim == m.mlp.input_dim() {
                assert_eq!(a.status, STATUS_OK, "queue {q} gen {}", a.generation);
                let want: Vec<i32> = a
                    .inputs
                    .chunks(a.in_dim)
                    .flat_map(|x| m.mlp.predict(x).unwrap())
                    .collect();
                assert_eq!(a.outputs.len(), a.num_samples as usize * m.mlp.output_dim());
                assert_eq!(a.outputs, want, "queue {q} gen {}", a.generation);
                *per_gen_ok.entry(a.generation).or_default() += 1;
            } else {
                assert_eq!(a.status, STATUS_BAD_DIMS, "queue {q} gen {}", a.generation);
                assert!(a.outputs.is_empty());
            }
        }
    }
    // Traffic really ran across the swaps, on every queue.
    assert!(
        per_gen_ok.len() > 10,
        "answers spanned {} generations",
        per_gen_ok.len()
    );
    assert!(answers.iter().all(|l| l.len() > 10));

    // Config space shows the last generation and its model.
    let last = *gens.keys().max().unwrap();
    let cfg = fe.config().unwrap();
    assert_eq!(cfg.generation, last);
    let m = &models[gens[&last]];
    assert_eq!(cfg.input_dim() as usize, m.mlp.input_dim());
    assert_eq!(cfg.output_dim() as usize, m.mlp.output_dim());

    // The event queue: the early swaps were announced on the posted
    // buffers; the later ones are coalesced into one event for the next
    // buffer posted, which must carry the last generation.
    fe.post_event_buffer().unwrap();
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let e = fe
            .next_event(TIMEOUT)
            .unwrap_or_else(|err| {
                let log = daemon.log();
                let bad: Vec<&str> = log.lines().filter(|l| !l.contains(" INFO ")).collect();
                panic!(
                    "no event for generation {last} after {seen:?}: {err}\n{}",
                    bad.join("\n")
                )
            })
            .expect("a full event");
        assert_eq!(e.kind, EVENT_CONFIG_CHANGED);
        assert!(
            seen.last().is_none_or(|&g| e.generation > g),
            "{seen:?} then {e:?}"
        );
        seen.push(e.generation);
    }
    assert!(seen.len() >= 2, "events {seen:?}");

    // The daemon's per-queue counters saw each queue's traffic.
    let st = vhost_user_nn::admin::request(&admin, r#"{"cmd":"stats"}"#).unwrap();
    for (q, list) in answers.iter().enumerate() {
        let s = &st["queues"][q];
        let counted = s["ok"].as_u64().unwrap() + s["errors"].as_u64().unwrap();
        assert_eq!(
            counted as usize,
            list.len(),
            "admin stats of queue {q}: {st}"
        );
    }
    assert_eq!(st["swaps"], SWAPS as u64);
    eprintln!(
        "{total} requests on {QUEUES} queues across {} generations in {:?}",
        per_gen_ok.len(),
        started.elapsed()
    );
}
