// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Benchmark of the real daemon through the test frontend (no QEMU): one
//! and four request queues, batches of 1, 16 and 256 samples, OP_PREDICT
//! beside OP_NULL (the same path without inference).
//!
//! For each configuration two runs of `--secs` seconds:
//! * depth 1 (one request in flight per queue): round-trip latency p50/p99
//!   and the request rate it allows;
//! * depth `--depth` (pipelined): requests/s and predictions/s.
//!
//! Each measurement is split into `--reps` slices, null and predict
//! interleaved, so that drift in machine load hits both alike.
//! `--spin-us N` makes the frontend poll the used ring for N µs before
//! sleeping on the call eventfd.
//!
//! Then the daemon's polling mode: two daemons side by side, one with
//! `--poll-us 0` and one with `--poll-us P` (`--poll-us`, default 50),
//! measured in interleaved slices: depth-1 NULL and PREDICT (batch 1, one
//! queue) round-trip p50/p99, and the worker's CPU time per request (from
//! /proc/PID/task/*/schedstat; polling spends CPU between requests too).
//! Both with the frontend sleeping on the call eventfd (as a guest waiting
//! for its interrupt) and with it spinning on the used ring.
//!
//! Usage: `nn-frontend-bench [--model FILE] [--secs S] [--depth N]
//! [--reps N] [--spin-us N] [--poll-us P] [--only-poll]`; the
//! daemon is `$VIRTIO_NN_DAEMON`, which must be set (build it first, e.g.
//! `cargo build --release -p vhost-user-nn` and
//! `VIRTIO_NN_DAEMON=target/release/vhost-user-nn`).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nn_core::protocol::{RequestHeader, OP_NULL, OP_PREDICT, STATUS_OK};
use nn_core::Model;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::{Frontend, Options, TIMEOUT};
use virtio_nn_tests::{daemon_bin, default_model};

struct Args {
    model: PathBuf,
    secs: f64,
    depth: usize,
    reps: u32,
    spin_us: u64,
    poll_us: u64,
    only_poll: bool,
}

fn args() -> Args {
    let mut a = Args {
        model: default_model(),
        secs: 1.0,
        depth: 16,
        reps: 5,
        spin_us: 0,
        poll_us: 50,
        only_poll: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--model" => a.model = v().into(),
            "--secs" => a.secs = v().parse().expect("--secs S"),
            "--depth" => a.depth = v().parse().expect("--depth N"),
            "--reps" => a.reps = v().parse().expect("--reps N"),
            "--spin-us" => a.spin_us = v().parse().expect("--spin-us N"),
            "--poll-us" => a.poll_us = v().parse().expect("--poll-us P"),
            "--only-poll" => a.only_poll = true,
            "-h" | "--help" => {
                println!(
                    "nn-frontend-bench [--model FILE] [--secs S] [--depth N] [--reps N] \
                     [--spin-us N] [--poll-us P] [--only-poll]"
                );
                std::process::exit(0);
            }
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

#[derive(Default)]
struct RunStats {
    requests: u64,
    samples: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl RunStats {
    fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }
    fn pps(&self) -> f64 {
        self.samples as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let n = self.latencies.len();
        if n == 0 {
            return Duration::ZERO;
        }
        self.latencies[((n - 1) as f64 * p).round() as usize]
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    fe: &Frontend,
    queues: usize,
    op: u32,
    batch: u32,
    depth: usize,
    dur: Duration,
    in_dim: usize,
    out_dim: usize,
) -> RunStats {
    let inputs: Vec<i32> = (0..batch as usize * in_dim)
        .map(|i| ((i as i32 * 7919) % 65536) - 32768)
        .collect();
    let out_values = if op == OP_PREDICT {
        batch as usize * out_dim
    } else {
        0
    };
    let per_queue: Vec<RunStats> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..queues)
            .map(|q| {
                let inputs = &inputs;
                s.spawn(move || {
                    let mut st = RunStats::default();
                    let mut inflight: VecDeque<Instant> = VecDeque::new();
                    let mut id = 0u64;
                    let start = Instant::now();
                    loop {
                        let running = start.elapsed() < dur;
                        while running && inflight.len() < depth {
                            let h = RequestHeader {
                                opcode: op,
                                flags: 0,
                                id,
                                num_samples: batch,
                                in_dim: in_dim as u32,
                            };
                            id += 1;
                            inflight.push_back(Instant::now());
                            fe.start(q, &h, inputs, out_values).expect("submit");
                        }
                        let Some(t0) = inflight.pop_front() else {
                            break;
                        };
                        let r = fe.next_response(q, TIMEOUT).expect("response");
                        let h = r.header.expect("header");
                        assert_eq!(h.status, STATUS_OK, "{h:?}");
                        assert_eq!(r.outputs.len(), out_values);
                        st.latencies.push(t0.elapsed());
                        st.requests += 1;
                        st.samples += u64::from(h.num_samples);
                    }
                    st.elapsed = start.elapsed();
                    st
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut total = RunStats::default();
    for st in per_queue {
        total.requests += st.requests;
        total.samples += st.samples;
        total.elapsed = total.elapsed.max(st.elapsed);
        total.latencies.extend(st.latencies);
    }
    total
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

fn main() {
    let a = args();
    let model = Model::load(&a.model).expect("model loads");
    // Only warnings from the daemon: its per-request debug logs stay off.
    std::env::set_var("RUST_LOG", "warn");
    let bin = daemon_bin().unwrap_or_else(|e| {
        eprintln!("nn-frontend-bench: {e}");
        std::process::exit(2)
    });
    if !a.only_poll {
        table(&a, &bin, &model);
    }
    polling(&a, &bin, &model);
}

/// Total on-CPU time of all threads of process `pid`.
fn cpu_time(pid: u64) -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(ns)
}

/// The worker process serving `daemon`'s queues (its admin `status` pid).
fn worker_pid(daemon: &Daemon) -> u64 {
    let st = daemon
        .admin_request(r#"{"cmd":"status"}"#)
        .expect("admin status");
    st["pid"].as_u64().expect("status has the worker's pid")
}

/// `--poll-us 0` against `--poll-us P`, side by side.
fn polling(a: &Args, bin: &std::path::Path, model: &Model) {
    let (in_dim, out_dim) = (model.mlp.input_dim(), model.mlp.output_dim());
    let poll = a.poll_us.to_string();
    let daemons: Vec<Daemon> = [None, Some(poll.as_str())]
        .iter()
        .map(|p| {
            let mut b = Daemon::builder(bin).model(&a.model).queues(1).admin();
            if let Some(p) = p {
                b = b.arg("--poll-us").arg(p);
            }
            b.start().expect("daemon starts")
        })
        .collect();
    let pids: Vec<u64> = daemons.iter().map(worker_pid).collect();
    println!();
    println!(
        "polling: --poll-us 0 against --poll-us {}; depth 1, batch 1, one queue, {} s per \
         cell in {} interleaved slices; daemon CPU per request from the worker's schedstat",
        a.poll_us, a.secs, a.reps
    );
    println!(
        "{:>8} {:>7} | {:>9} {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} {:>9}",
        "frontend",
        "op",
        "p50 us",
        "p99 us",
        "cpu us/r",
        "poll p50",
        "poll p99",
        "poll cpu",
        "p50 ratio",
        "cpu ratio"
    );
    for spin in [Duration::ZERO, Duration::from_millis(1)] {
        let fes: Vec<Frontend> = daemons
            .iter()
            .map(|d| {
                Frontend::connect_with(
                    d.socket(),
                    Options {
                        queues: 1,
                        slots: 2,
                        spin,
                        ..Options::default()
                    },
                )
                .expect("frontend connects")
            })
            .collect();
        for op in [OP_NULL, OP_PREDICT] {
            let mut lat: [RunStats; 2] = Default::default();
            let mut cpu = [Duration::ZERO; 2];
            let slice = Duration::from_secs_f64(a.secs) / a.reps.max(1);
            for (fe, _) in fes.iter().zip(&pids) {
                run(fe, 1, op, 1, 1, slice / 4, in_dim, out_dim);
            }
            for _ in 0..a.reps.max(1) {
                for (i, fe) in fes.iter().enumerate() {
                    let c0 = cpu_time(pids[i]);
                    let x = run(fe, 1, op, 1, 1, slice, in_dim, out_dim);
                    cpu[i] += cpu_time(pids[i]).saturating_sub(c0);
                    lat[i].requests += x.requests;
                    lat[i].latencies.extend(x.latencies);
                }
            }
            let per_req = |i: usize, lat: &[RunStats; 2]| {
                cpu[i].as_secs_f64() * 1e6 / lat[i].requests.max(1) as f64
            };
            let (c0, c1) = (per_req(0, &lat), per_req(1, &lat));
            let (p50_0, p99_0) = (lat[0].pct(0.50), lat[0].pct(0.99));
            let (p50_1, p99_1) = (lat[1].pct(0.50), lat[1].pct(0.99));
            println!(
                "{:>8} {:>7} | {:>9} {:>9} {:>9.1} | {:>9} {:>9} {:>9.1} | {:>9.2} {:>9.2}",
                if spin.is_zero() { "sleeps" } else { "spins" },
                if op == OP_NULL { "null" } else { "predict" },
                us(p50_0),
                us(p99_0),
                c0,
                us(p50_1),
                us(p99_1),
                c1,
                p50_1.as_secs_f64() / p50_0.as_secs_f64(),
                c1 / c0
            );
        }
    }
}

/// The main table: one and four queues, batches 1/16/256, null and predict.
fn table(a: &Args, bin: &std::path::Path, model: &Model) {
    let (in_dim, out_dim) = (model.mlp.input_dim(), model.mlp.output_dim());
    let daemon = Daemon::builder(bin)
        .model(&a.model)
        .queues(4)
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect_with(
        daemon.socket(),
        Options {
            queues: 4,
            slots: a.depth.max(1),
            spin: Duration::from_micros(a.spin_us),
            ..Options::default()
        },
    )
    .expect("frontend connects");
    // The figures mean nothing if the answers are wrong: check a full
    // batch bit-exactly against the reference first, on every queue.
    for q in 0..4 {
        let n = 256;
        let x: Vec<i32> = (0..n * in_dim)
            .map(|i| ((i as i32 * 40503) % 131072) - 65536)
            .collect();
        let (h, y) = fe
            .predict_dims(q, 1, &x, n as u32, out_dim)
            .expect("predict");
        assert_eq!(h.status, STATUS_OK);
        let want: Vec<i32> = x
            .chunks(in_dim)
            .flat_map(|s| model.mlp.predict(s).unwrap())
            .collect();
        assert_eq!(y, want, "queue {q}: outputs differ from Mlp::predict");
    }
    let dur = Duration::from_secs_f64(a.secs);
    println!(
        "daemon {}; model {:?} dims {:?}; event_idx {}; {} s per run in {} interleaved slices, \
         pipelined depth {}, spin {} us",
        bin.display(),
        model.name,
        model.mlp.dims(),
        fe.event_idx(),
        a.secs,
        a.reps,
        a.depth,
        a.spin_us
    );
    println!(
        "{:>6} {:>5} {:>7} | {:>9} {:>9} {:>9} {:>10} | {:>9} {:>10} | {:>9} {:>9}",
        "queues",
        "batch",
        "op",
        "d1 req/s",
        "p50 us",
        "p99 us",
        "d1 pred/s",
        "req/s",
        "pred/s",
        "p50/null",
        "rps/null"
    );
    for queues in [1usize, 4] {
        for batch in [1u32, 16, 256] {
            let ops = [OP_NULL, OP_PREDICT];
            let mut lat: [RunStats; 2] = Default::default();
            let mut thr: [RunStats; 2] = Default::default();
            let slice = dur / a.reps.max(1);
            for &op in &ops {
                // Warm up (page faults, lazy allocation in the daemon).
                run(&fe, queues, op, batch, a.depth, slice / 4, in_dim, out_dim);
            }
            for _ in 0..a.reps.max(1) {
                for (i, &op) in ops.iter().enumerate() {
                    let l = run(&fe, queues, op, batch, 1, slice, in_dim, out_dim);
                    let t = run(&fe, queues, op, batch, a.depth, slice, in_dim, out_dim);
                    for (acc, x) in [(&mut lat[i], l), (&mut thr[i], t)] {
                        acc.requests += x.requests;
                        acc.samples += x.samples;
                        acc.elapsed += x.elapsed;
                        acc.latencies.extend(x.latencies);
                    }
                }
            }
            let null_p50 = lat[0].pct(0.50);
            let null_rps = thr[0].rps();
            for (i, &op) in ops.iter().enumerate() {
                let (p50, p99) = (lat[i].pct(0.50), lat[i].pct(0.99));
                let (r1, r2) = (
                    format!("{:.2}", p50.as_secs_f64() / null_p50.as_secs_f64()),
                    format!("{:.2}", thr[i].rps() / null_rps),
                );
                let name = if op == OP_NULL { "null" } else { "predict" };
                let pred = |x: f64| {
                    if op == OP_NULL {
                        "-".to_string()
                    } else {
                        human(x)
                    }
                };
                println!(
                    "{:>6} {:>5} {:>7} | {:>9} {:>9} {:>9} {:>10} | {:>9} {:>10} | {:>9} {:>9}",
                    queues,
                    batch,
                    name,
                    human(lat[i].rps()),
                    us(p50),
                    us(p99),
                    pred(lat[i].pps()),
                    human(thr[i].rps()),
                    pred(thr[i].pps()),
                    r1,
                    r2
                );
            }
        }
    }
    drop(fe);
    drop(daemon);
}
