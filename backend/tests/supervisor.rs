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

use nn_core::protocol::{
    RequestHeader, DEVICE_STATUS_ERROR, DEVICE_STATUS_READY, OP_PREDICT, STATUS_OK,
};
use nn_core::Model;
use serde_json::json;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::{Frontend, TIMEOUT};

const QUEUES: usize = 4;
const KILLS: usize = 200;
/// Requests in flight per queue.
const DEPTH: usize = 4;
/// The models' dims.
const DIMS: [usize; 3] = [16, 32, 4];

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

/// Keeps `DEPTH` requests in flight on queue `q` until `done`, then drains;
/// every answer must come once, in its own buffer, with a header.
fn traffic(fe: &Frontend, q: usize, done: &AtomicBool) -> (Vec<Answer>, usize) {
    let mut seed = 77 + q as u64;
    let mut answers = Vec::new();
    let mut pending: HashMap<u64, Vec<i32>> = HashMap::new();
    let mut next_id = (q as u64) << 32;
    let mut sent = 0;
    loop {
        while !done.load(Ordering::Acquire) && pending.len() < DEPTH {
            let n = 1 + (next_id % 5) as u32;
            let inputs: Vec<i32> = (0..n as usize * 16)
                .map(|_| common::lcg(&mut seed))
                .collect();
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
        let inputs = pending
            .remove(&h.id)
            .unwrap_or_else(|| panic!("queue {q}: request {} answered twice", h.id));
        answers.push(Answer {
            at: Instant::now(),
            generation: h.generation,
            status: h.status,
            inputs,
            outputs: r.outputs,
        });
    }
    (answers, sent)
}

/// Every request answered, each answer right for the model of its
/// generation (`gens`: generation -> index into `models`); returns the count.
fn check(
    answers: &[Vec<Answer>],
    sent: &[usize],
    gens: &HashMap<u32, usize>,
    models: &[Model],
) -> usize {
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
    total
}

/// Writes `models` into `dir`; their paths.
fn write_models(dir: &std::path::Path, models: &[Model]) -> Vec<PathBuf> {
    models
        .iter()
        .map(|m| {
            let p = dir.join(format!("{}.safetensors", m.name));
            std::fs::write(&p, m.to_bytes()).unwrap();
            p
        })
        .collect()
}

/// Kills the worker `KILLS` times under load (swapping models first if
/// `swap`), then checks every answer.
fn kill_under_load(swap: bool) {
    let dir = tempfile::tempdir().unwrap();
    let models = [common::model(&DIMS, 1, "a"), common::model(&DIMS, 2, "b")];
    let paths = write_models(dir.path(), &models);
    let daemon = common::daemon()
        .model(&paths[0])
        .queues(QUEUES as u32)
        .admin()
        // Kills come faster than a crash loop's backoff would allow.
        .arg("--restart-backoff-ms")
        .arg("0")
        .start()
        .expect("daemon starts");
    // The first swaps are announced on the posted event buffers.
    let fe = common::frontend_with_events(&daemon, QUEUES);
    let gens: Mutex<HashMap<u32, usize>> = Mutex::new(HashMap::from([(1, 0)]));
    let done = AtomicBool::new(false);
    let mut kill_times = Vec::new();
    let mut takeovers = Vec::new();

    let (answers, sent): (Vec<Vec<Answer>>, Vec<usize>) = std::thread::scope(|s| {
        let traffic: Vec<_> = (0..QUEUES)
            .map(|q| {
                let (fe, done) = (&fe, &done);
                s.spawn(move || traffic(fe, q, done))
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
    let total = check(&answers, &sent, &gens, &models);
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

fn kill(pid: u32) {
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .expect("the worker exists");
}

#[test]
fn a_crash_loop_backs_off_and_config_reads_then_say_error() {
    let dir = tempfile::tempdir().unwrap();
    let models = [common::model(&DIMS, 1, "a")];
    let paths = write_models(dir.path(), &models);
    let daemon = common::daemon()
        .model(&paths[0])
        .admin()
        .arg("--restart-backoff-ms")
        .arg("3000")
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect(daemon.socket(), 1).expect("frontend connects");
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_READY);
    // A worker that ran a second restarts at once; one that dies at once
    // after starting makes the next wait (3 s here).
    std::thread::sleep(Duration::from_millis(1100));
    let first = worker_pid(&daemon, None);
    kill(first);
    let second = worker_pid(&daemon, Some(first));
    kill(second);
    let t = Instant::now();
    // Once the supervisor has seen the death (a config read sent before
    // that goes to the dead worker and is sent again to the next one).
    while !daemon.log().contains("crash loop, next start in 3000 ms") {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{}",
            tail(&daemon.log())
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // No worker: config reads answer at once, from the last config, ERROR.
    let cfg = fe.config().expect("a config read while no worker runs");
    assert_eq!(cfg.status, DEVICE_STATUS_ERROR);
    assert_eq!(cfg.generation, 1);
    assert_eq!(cfg.input_dim(), 16);
    assert!(t.elapsed() < Duration::from_secs(1), "not left waiting");
    // A request sent now is answered once the next worker runs.
    let x: Vec<i32> = (0..16).map(|i| i * 1000).collect();
    let (h, y) = fe
        .predict_dims(0, 9, &x, 1, 4)
        .expect("answered after the backoff");
    assert!(t.elapsed() >= Duration::from_secs(2), "the restart waited");
    assert_eq!(
        (h.status, y),
        (STATUS_OK, models[0].mlp.predict(&x).unwrap())
    );
    assert_eq!(fe.config().unwrap().status, DEVICE_STATUS_READY);
    let status = admin(&daemon, json!({"cmd": "status"}));
    assert_eq!(status["supervisor"]["restarts"], 2, "{status}");
    assert!(status["supervisor"]["last_exit"]
        .as_str()
        .is_some_and(|e| e.contains("SIGKILL")));
    let metrics = admin(&daemon, json!({"cmd": "metrics"}));
    let text = metrics["text"].as_str().unwrap();
    assert!(
        text.contains("virtio_nn_worker_restarts_total 2\n"),
        "{text}"
    );
}

#[test]
fn ctl_upgrade_replaces_the_worker_under_load_and_refuses_a_broken_binary() {
    let dir = tempfile::tempdir().unwrap();
    let models = [common::model(&DIMS, 1, "a")];
    let paths = write_models(dir.path(), &models);
    let daemon = common::daemon()
        .model(&paths[0])
        .queues(2)
        .admin()
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect(daemon.socket(), 2).expect("frontend connects");
    let ctl = |args: &[&str]| {
        std::process::Command::new(common::DAEMON)
            .arg("ctl")
            .arg("--admin-socket")
            .arg(daemon.admin_socket().unwrap())
            .args(args)
            .output()
            .expect("ctl runs")
    };
    let done = AtomicBool::new(false);
    let (answers, sent): (Vec<Vec<Answer>>, Vec<usize>) = std::thread::scope(|s| {
        let traffic: Vec<_> = (0..2)
            .map(|q| {
                let (fe, done) = (&fe, &done);
                s.spawn(move || traffic(fe, q, done))
            })
            .collect();
        let upgrades = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut pid = worker_pid(&daemon, None);
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(200));
                let out = ctl(&["upgrade"]);
                assert!(out.status.success(), "{out:?}");
                let new = worker_pid(&daemon, None);
                assert_ne!(new, pid, "a new worker after the upgrade");
                pid = new;
            }
            let out = ctl(&["upgrade", "--binary", "/bin/false"]);
            assert!(!out.status.success(), "an upgrade to /bin/false must fail");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("upgrade refused"), "{err}");
            assert_eq!(worker_pid(&daemon, None), pid, "the old worker serves on");
            std::thread::sleep(Duration::from_millis(200));
        }));
        done.store(true, Ordering::Release);
        if let Err(e) = upgrades {
            eprintln!("daemon log:\n{}", tail(&daemon.log()));
            std::panic::resume_unwind(e);
        }
        traffic
            .into_iter()
            .map(|t| t.join().expect("traffic"))
            .unzip()
    });
    let total = check(&answers, &sent, &HashMap::from([(1, 0)]), &models);
    assert!(answers.iter().all(|a| a.len() > 10), "traffic ran");
    let status = admin(&daemon, json!({"cmd": "status"}));
    assert_eq!(status["supervisor"]["upgrades"], 3, "{status}");
    assert_eq!(status["supervisor"]["restarts"], 0, "{status}");
    eprintln!("3 upgrades and a refused one under load: {total} requests, all right");
}
