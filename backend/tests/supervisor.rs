// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The supervisor keeps QEMU's connection while its worker dies: through
//! the test frontend (playing QEMU and the guest), four request queues of
//! pipelined traffic while the worker is SIGKILLed 200 times (and, in the
//! second test, a model is hot-swapped in just before each kill). Every
//! request must get exactly one answer, right for the model of the
//! generation it names, on the one vhost-user connection of the start.
//! Prints the restart gaps (SIGKILL to the first answer after it).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nn_core::protocol::{RequestHeader, OP_PREDICT, STATUS_OK};
use nn_core::{Activation, Layer, Mlp, Model};
use serde_json::json;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::{Frontend, Options, TIMEOUT};

const QUEUES: usize = 4;
const KILLS: usize = 200;
/// Requests in flight per queue.
const DEPTH: usize = 4;

fn lcg(seed: &mut u64) -> i32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 32) as i32) >> 13
}

/// A deterministic 16-32-4 model.
fn model(seed: u64, name: &str) -> Model {
    let mut s = seed;
    let dims = [16, 32, 4];
    let layers = dims
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let weights = (0..w[0] * w[1]).map(|_| lcg(&mut s) / 4).collect();
            let bias = (0..w[1]).map(|_| lcg(&mut s) / 8).collect();
            let act = if i == 0 {
                Activation::Relu
            } else {
                Activation::Identity
            };
            Layer::new(w[0], w[1], weights, bias, act).unwrap()
        })
        .collect();
    Model::new(Mlp::new(layers).unwrap(), name)
}

fn admin(d: &Daemon, req: serde_json::Value) -> serde_json::Value {
    let r = d.admin_request(&req.to_string()).expect("admin answers");
    assert_eq!(r["ok"], true, "{r}");
    r
}

/// The pid of the worker serving the admin socket, once it is not `old`.
/// (A worker killed while it holds the request closes the connection: ask
/// again.)
fn worker_pid(d: &Daemon, old: Option<u32>) -> u32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let r = d.admin_request(&json!({"cmd": "status"}).to_string());
        if let Some(pid) = r.ok().and_then(|r| r["pid"].as_u64()) {
            if Some(pid as u32) != old {
                return pid as u32;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no new worker answers the admin socket"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// One answer: when it arrived, its generation, inputs and outputs.
struct Answer {
    at: Instant,
    generation: u32,
    status: u32,
    inputs: Vec<i32>,
    outputs: Vec<i32>,
}

/// Kills the worker `KILLS` times under load (swapping models first if
/// `swap`), then checks every answer.
fn kill_under_load(swap: bool) {
    let dir = tempfile::tempdir().unwrap();
    let models = [model(1, "a"), model(2, "b")];
    let paths: Vec<PathBuf> = ["a", "b"]
        .iter()
        .zip(&models)
        .map(|(n, m)| {
            let p = dir.path().join(format!("{n}.safetensors"));
            std::fs::write(&p, m.to_bytes()).unwrap();
            p
        })
        .collect();
    let daemon = common::daemon()
        .model(&paths[0])
        .queues(QUEUES as u32)
        .admin()
        // Kills come faster than a crash loop's backoff would allow.
        .arg("--restart-backoff-ms")
        .arg("0")
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect_with(
        daemon.socket(),
        Options {
            queues: QUEUES,
            event_queue: true,
            ..Options::default()
        },
    )
    .expect("frontend connects");
    for _ in 0..4 {
        fe.post_event_buffer().unwrap();
    }
    let gens: Mutex<HashMap<u32, usize>> = Mutex::new(HashMap::from([(1, 0)]));
    let done = AtomicBool::new(false);
    let mut kill_times = Vec::new();
    let mut takeovers = Vec::new();

    let (answers, sent): (Vec<Vec<Answer>>, Vec<usize>) = std::thread::scope(|s| {
        let traffic: Vec<_> = (0..QUEUES)
            .map(|q| {
                let (fe, done) = (&fe, &done);
                s.spawn(move || {
                    let mut seed = 77 + q as u64;
                    let mut answers = Vec::new();
                    let mut pending: HashMap<u64, Vec<i32>> = HashMap::new();
                    let mut next_id = (q as u64) << 32;
                    let mut sent = 0;
                    loop {
                        while !done.load(Ordering::Acquire) && pending.len() < DEPTH {
                            let n = 1 + (next_id % 5) as u32;
                            let inputs: Vec<i32> =
                                (0..n as usize * 16).map(|_| lcg(&mut seed)).collect();
                            let h = RequestHeader {
                                opcode: OP_PREDICT,
                                flags: 0,
                                id: next_id,
                                num_samples: n,
                                in_dim: 16,
                            };
                            fe.start(q, &h, &inputs, n as usize * 4).unwrap();
                            pending.insert(next_id, inputs);
                            next_id += 1;
                            sent += 1;
                        }
                        if pending.is_empty() {
                            break;
                        }
                        let r = fe
                            .next_response(q, TIMEOUT)
                            .unwrap_or_else(|e| panic!("queue {q}: request lost: {e}"));
                        let h = r.header.expect("a response header");
                        assert_eq!(h.id, r.request_id, "queue {q}: answer in its own buffer");
                        let inputs = pending.remove(&h.id).unwrap_or_else(|| {
                            panic!("queue {q}: request {} answered twice", h.id)
                        });
                        answers.push(Answer {
                            at: Instant::now(),
                            generation: h.generation,
                            status: h.status,
                            inputs,
                            outputs: r.outputs,
                        });
                    }
                    (answers, sent)
                })
            })
            .collect();

        // A panic here must stop the traffic threads, or the scope waits
        // for them forever.
        let kills = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut pid = worker_pid(&daemon, None);
            for i in 0..KILLS {
                if swap {
                    let which = (i + 1) % 2;
                    let r = admin(&daemon, json!({"cmd": "load", "path": paths[which]}));
                    let g = r["generation"].as_u64().unwrap() as u32;
                    assert!(gens.lock().unwrap().insert(g, which).is_none());
                }
                let t = Instant::now();
                rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                )
                .expect("the worker exists");
                kill_times.push(t);
                pid = worker_pid(&daemon, Some(pid));
                takeovers.push(t.elapsed());
                // Let traffic reach the new worker before the next kill.
                std::thread::sleep(Duration::from_millis(5));
            }
        }));
        done.store(true, Ordering::Release);
        if let Err(e) = kills {
            eprintln!("daemon log:\n{}", tail(&daemon.log()));
            std::panic::resume_unwind(e);
        }
        let results: Vec<_> = traffic.into_iter().map(|t| t.join()).collect();
        if results.iter().any(Result::is_err) {
            panic!("a queue failed; daemon log:\n{}", tail(&daemon.log()));
        }
        results.into_iter().map(Result::unwrap).unzip()
    });

    let gens = gens.into_inner().unwrap();
    let mut total = 0;
    for (q, list) in answers.iter().enumerate() {
        assert_eq!(
            list.len(),
            sent[q],
            "queue {q}: every request answered once"
        );
        total += list.len();
        for a in list {
            let m = &models[*gens
                .get(&a.generation)
                .unwrap_or_else(|| panic!("queue {q}: unknown generation {}", a.generation))];
            assert_eq!(a.status, STATUS_OK, "queue {q}");
            let want: Vec<i32> = a
                .inputs
                .chunks(16)
                .flat_map(|x| m.mlp.predict(x).unwrap())
                .collect();
            assert_eq!(a.outputs, want, "queue {q} generation {}", a.generation);
        }
    }
    // The frontend's one connection still works: config reads go through.
    let cfg = fe.config().expect("config read after the kills");
    assert_eq!(cfg.generation, *gens.keys().max().unwrap());
    let status = admin(&daemon, json!({"cmd": "status"}));
    assert_eq!(status["supervisor"]["restarts"], KILLS as u64, "{status}");
    assert_eq!(status["generation"], cfg.generation);
    let log = daemon.log();
    assert!(
        !log.contains("frontend disconnected"),
        "the frontend's connection never closed:\n{}",
        tail(&log)
    );

    // Gap: SIGKILL to the first answer received after it (any queue).
    let mut firsts: Vec<Duration> = answers
        .iter()
        .flatten()
        .map(|a| a.at)
        .fold(
            vec![None; kill_times.len()],
            |mut acc: Vec<Option<Instant>>, at| {
                for (k, &t) in kill_times.iter().enumerate() {
                    if at > t && acc[k].is_none_or(|f| at < f) {
                        acc[k] = Some(at);
                    }
                }
                acc
            },
        )
        .into_iter()
        .zip(&kill_times)
        .filter_map(|(f, &t)| f.map(|f| f - t))
        .collect();
    firsts.sort();
    takeovers.sort();
    let pct = |v: &[Duration], p: usize| v[(v.len() - 1) * p / 100];
    eprintln!(
        "{KILLS} worker kills{}: {total} requests on {QUEUES} queues, none lost or repeated; \
         SIGKILL -> first answer p50 {:?} p99 {:?}; SIGKILL -> admin answered by the new worker p50 {:?} p99 {:?}",
        if swap { " each after a hot-swap" } else { "" },
        pct(&firsts, 50),
        pct(&firsts, 99),
        pct(&takeovers, 50),
        pct(&takeovers, 99),
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn two_hundred_worker_kills_under_load_lose_no_request() {
    kill_under_load(false);
}

#[test]
fn a_hot_swap_before_each_kill_survives_with_its_generation() {
    kill_under_load(true);
}
