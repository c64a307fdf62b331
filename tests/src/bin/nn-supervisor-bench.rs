// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! What the supervisor costs and what a worker restart costs, through the
//! test frontend (no QEMU), in one run:
//!
//! * depth-1 round trips (OP_PREDICT and OP_NULL, batch 1) against a daemon
//!   with `--no-supervisor` and one with the supervisor, interleaved in
//!   slices so machine load hits both alike: p50/p99 and the ratio (the
//!   data path does not pass through the supervisor, so ≈ 1);
//! * config-space reads (one GET_CONFIG of the whole config): the relay's
//!   cost, same layout;
//! * the restart gap: SIGKILL the worker, then time until a request sent
//!   right after the kill is answered (by the new worker), `--kills` times.
//!
//! Usage: `nn-supervisor-bench [--model FILE] [--requests N] [--kills N]`;
//! the daemon is `$VIRTIO_NN_DAEMON` (e.g. target/release/vhost-user-nn).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nn_core::protocol::{CONFIG_SIZE, STATUS_OK};
use nn_core::Model;
use serde_json::json;
use vhost_user_nn::testing::daemon::Daemon;
use vhost_user_nn::testing::frontend::Frontend;
use virtio_nn_tests::{daemon_bin, default_model};

struct Args {
    model: PathBuf,
    requests: usize,
    kills: usize,
}

fn args() -> Args {
    let mut a = Args {
        model: default_model(),
        requests: 20_000,
        kills: 100,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--model" => a.model = v().into(),
            "--requests" => a.requests = v().parse().expect("--requests N"),
            "--kills" => a.kills = v().parse().expect("--kills N"),
            "-h" | "--help" => {
                println!("nn-supervisor-bench [--model FILE] [--requests N] [--kills N]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() - 1) as f64 * p) as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn main() {
    let a = args();
    let model = Model::load(&a.model).expect("model loads");
    let (in_dim, out_dim) = (model.mlp.input_dim(), model.mlp.output_dim());
    std::env::set_var("RUST_LOG", "warn");
    let bin = daemon_bin().unwrap_or_else(|e| {
        eprintln!("nn-supervisor-bench: {e}");
        std::process::exit(2)
    });
    let plain = Daemon::builder(&bin)
        .model(&a.model)
        .arg("--no-supervisor")
        .start()
        .expect("daemon starts");
    let sup = Daemon::builder(&bin)
        .model(&a.model)
        .admin()
        .arg("--restart-backoff-ms")
        .arg("0")
        .start()
        .expect("supervised daemon starts");
    let fes = [
        Frontend::connect(plain.socket(), 1).expect("frontend connects"),
        Frontend::connect(sup.socket(), 1).expect("frontend connects"),
    ];
    let x: Vec<i32> = (0..in_dim as i32).map(|i| i * 4099 - 30000).collect();
    let want = model.mlp.predict(&x).unwrap();
    for fe in &fes {
        let (h, y) = fe.predict_dims(0, 1, &x, 1, out_dim).expect("predict");
        assert_eq!((h.status, &y), (STATUS_OK, &want), "answers are right");
    }

    // Interleaved slices: [plain, supervised] × [predict, null, config].
    let slices = 20;
    let per = (a.requests / slices).max(1);
    let mut lat: [[Vec<Duration>; 3]; 2] = Default::default();
    for slice in 0..slices {
        // Alternate which daemon goes first in a slice.
        for d in [slice % 2, 1 - slice % 2] {
            let fe = &fes[d];
            for _ in 0..per {
                let t = Instant::now();
                let (h, _) = fe.predict_dims(0, 2, &x, 1, out_dim).expect("predict");
                lat[d][0].push(t.elapsed());
                assert_eq!(h.status, STATUS_OK);
            }
            for _ in 0..per {
                let t = Instant::now();
                fe.null(0, 1, in_dim as u32).expect("null");
                lat[d][1].push(t.elapsed());
            }
            for _ in 0..per / 10 {
                let t = Instant::now();
                fe.config_bytes(0, CONFIG_SIZE as u32).expect("config read");
                lat[d][2].push(t.elapsed());
            }
        }
    }
    println!(
        "daemon {}; model {:?} {:?}; {} requests per cell in {slices} interleaved slices",
        bin.display(),
        model.name,
        model.mlp.dims(),
        per * slices
    );
    println!(
        "{:<28} | {:>10} {:>10} | {:>10} {:>10} | {:>9} {:>9}",
        "depth 1, batch 1", "plain p50", "p99", "superv p50", "p99", "p50 ratio", "p99 ratio"
    );
    for (i, name) in [
        "predict round trip (us)",
        "null round trip (us)",
        "config read, 64 B (us)",
    ]
    .iter()
    .enumerate()
    {
        let [p, s] = &mut lat;
        let (p50, p99) = (pct(&mut p[i], 0.5), pct(&mut p[i], 0.99));
        let (s50, s99) = (pct(&mut s[i], 0.5), pct(&mut s[i], 0.99));
        println!(
            "{name:<28} | {:>10} {:>10} | {:>10} {:>10} | {:>9.3} {:>9.3}",
            us(p50),
            us(p99),
            us(s50),
            us(s99),
            s50.as_secs_f64() / p50.as_secs_f64(),
            s99.as_secs_f64() / p99.as_secs_f64()
        );
    }

    // The restart gap.
    let fe = &fes[1];
    let status = || {
        sup.admin_request(&json!({"cmd": "status"}).to_string())
            .ok()
            .and_then(|r| r["pid"].as_u64())
    };
    let mut gaps = Vec::new();
    let mut pid = status().expect("status");
    for k in 0..a.kills {
        let t = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).expect("a pid"),
            rustix::process::Signal::KILL,
        )
        .expect("the worker exists");
        let (h, y) = fe
            .predict_dims(0, 100 + k as u64, &x, 1, out_dim)
            .expect("answered by the new worker");
        gaps.push(t.elapsed());
        assert_eq!((h.status, &y), (STATUS_OK, &want), "right after a restart");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match status() {
                Some(p) if p != pid => {
                    pid = p;
                    break;
                }
                _ if Instant::now() > deadline => panic!("no new worker"),
                _ => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
    let n = gaps.len();
    println!(
        "worker restart gap (SIGKILL -> answer to a request sent after it), {n} kills: \
         p50 {} ms, p99 {} ms, max {} ms",
        pct(&mut gaps, 0.5).as_secs_f64() * 1e3,
        pct(&mut gaps, 0.99).as_secs_f64() * 1e3,
        gaps[n - 1].as_secs_f64() * 1e3,
    );
}
