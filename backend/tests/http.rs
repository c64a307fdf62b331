// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `--http` through the real daemon (the binary of this build, supervised
//! and with the default seccomp filter, see `common/mod.rs`): each endpoint
//! in each state, asked with `curl`; a scrape read by a Prometheus text
//! parser (`prometheus-parse`); oversized and slow clients bounded while
//! the daemon keeps answering.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nn_core::protocol::{RequestHeader, OP_PREDICT, STATUS_OK};
use nn_core::Model;
use serde_json::{json, Value};
use vhost_user_nn::health::STUCK_AFTER;
use vhost_user_nn::http::{MAX_CONNECTIONS, MAX_HEAD, READ_TIMEOUT};
use vhost_user_nn::testing::daemon::{Daemon, DaemonBuilder};
use vhost_user_nn::testing::frontend::{Frontend, TIMEOUT};

mod common;
use common::default_model;

/// A daemon serving `--http` on a free loopback port, and that port's
/// address (read from its log).
fn start(b: DaemonBuilder) -> (Daemon, String) {
    let d = b
        .arg("--http")
        .arg("127.0.0.1:0")
        .start()
        .expect("daemon starts");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = d.log();
        if let Some(addr) = log
            .lines()
            .find_map(|l| l.split_once("HTTP endpoint on http://").map(|(_, a)| a))
        {
            return (d, addr.trim().to_string());
        }
        assert!(Instant::now() < deadline, "no HTTP endpoint: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An answer: status, headers (lower-case names), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: String,
    body: String,
}

/// `curl -X method` of `url` with `extra` arguments.
fn curl(extra: &[&str], url: &str) -> Answer {
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-D", "-"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    Answer {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

fn get(addr: &str, path: &str) -> Answer {
    curl(&[], &format!("http://{addr}{path}"))
}

/// Polls `path` until its status is `status`; the last answer.
fn wait_status(d: &Daemon, addr: &str, path: &str, status: u16, within: Duration) -> Answer {
    let deadline = Instant::now() + within;
    loop {
        let a = get(addr, path);
        if a.status == status {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not answer {status} in {within:?}: {a:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The seccomp filter (trap mode, the default) refused nothing.
fn assert_no_seccomp_refusal(d: &Daemon) {
    let log = d.log();
    assert!(!log.contains("seccomp: system call"), "{log}");
}

fn request(model: &Model, id: u64, samples: u32) -> (RequestHeader, Vec<i32>) {
    let in_dim = model.mlp.input_dim();
    let h = RequestHeader {
        opcode: OP_PREDICT,
        flags: 0,
        id,
        num_samples: samples,
        in_dim: in_dim as u32,
    };
    let n = in_dim * samples as usize;
    (h, (0..n as i32).map(|i| (i % 16) * 4096).collect())
}

#[test]
fn health_and_models_follow_the_model_the_frontend_and_the_workers() {
    let model = Model::load(&default_model()).unwrap();
    let (d, addr) = start(
        common::daemon()
            .model(default_model())
            .queues(2)
            .admin()
            .arg("--test-mode"),
    );
    assert_eq!(get(&addr, "/v2/health/live").status, 200);
    // No frontend yet.
    let a = get(&addr, "/v2/health/ready");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(
        a.body.contains("frontend: disconnected"),
        "the reason: {a:?}"
    );

    let name = urlencode(&model.name);
    let a = get(&addr, &format!("/v2/models/{name}"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.headers.contains("content-type: application/json"),
        "{a:?}"
    );
    let v: Value = serde_json::from_str(&a.body).expect("JSON");
    assert_eq!(v["name"], json!(model.name));
    assert_eq!(v["dims"], json!([16, 32, 4]));
    assert_eq!(v["activations"], json!(["relu", "identity"]));
    assert_eq!(
        v["checksum"],
        json!(format!("crc32c:{:08x}", model.checksum))
    );
    assert_eq!(v["generation"], json!(1));
    assert_eq!(v["version"], Value::Null);
    assert_eq!(get(&addr, &format!("/v2/models/{name}/ready")).status, 200);
    assert_eq!(get(&addr, "/v2/models/other").status, 404);
    assert_eq!(get(&addr, "/v2/models/other/ready").status, 404);

    // A frontend: ready.
    let fe = Frontend::connect(d.socket(), 2).expect("frontend connects");
    wait_status(&d, &addr, "/v2/health/ready", 200, TIMEOUT);

    // A stuck worker: not ready, and why.
    let delay = STUCK_AFTER + Duration::from_secs(3);
    let r = d
        .admin_request(&json!({"cmd": "test-delay", "ms": delay.as_millis() as u64}).to_string())
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let (hdr, x) = request(&model, 7, 1);
    fe.start(1, &hdr, &x, model.mlp.output_dim()).unwrap();
    let a = wait_status(&d, &addr, "/v2/health/ready", 503, STUCK_AFTER + TIMEOUT);
    assert!(a.body.contains("worker 1: stuck"), "{a:?}");
    // Meanwhile the metrics show the request in flight.
    let m = get(&addr, "/metrics").body;
    assert!(
        m.contains("virtio_nn_requests_in_flight{queue=\"1\"} 1"),
        "{m}"
    );
    d.admin_request(r#"{"cmd":"test-delay","ms":0}"#).unwrap();
    let r = fe.next_response(1, delay + TIMEOUT).unwrap();
    assert_eq!(r.header.unwrap().status, STATUS_OK);
    wait_status(&d, &addr, "/v2/health/ready", 200, TIMEOUT);

    // The frontend leaves: not ready again.
    drop(fe);
    wait_status(&d, &addr, "/v2/health/ready", 503, TIMEOUT);
    assert_no_seccomp_refusal(&d);
}

/// `name` with every byte but unreserved ones percent-encoded.
fn urlencode(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn without_a_model_nothing_is_ready_until_a_load() {
    let (d, addr) = start(common::daemon().admin());
    let _fe = Frontend::connect(d.socket(), 1).expect("frontend connects");
    std::thread::sleep(Duration::from_millis(200));
    let a = get(&addr, "/v2/health/ready");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("model: none"), "{a:?}");
    assert_eq!(get(&addr, "/v2/models/small").status, 404);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.safetensors");
    std::fs::write(&path, common::model(&[4, 3], 1, "small").to_bytes()).unwrap();
    let r = d
        .admin_request(&json!({"cmd": "load", "path": path}).to_string())
        .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    let v: Value = serde_json::from_str(&get(&addr, "/v2/models/small").body).unwrap();
    assert_eq!(
        (v["dims"].clone(), v["generation"].clone()),
        (json!([4, 3]), json!(1))
    );
    assert_eq!(get(&addr, "/v2/models/small/ready").status, 200);
    wait_status(&d, &addr, "/v2/health/ready", 200, TIMEOUT);
    let m = get(&addr, "/metrics").body;
    assert!(m.contains("virtio_nn_model_info{name=\"small\""), "{m}");
    assert_no_seccomp_refusal(&d);
}

#[test]
fn unknown_paths_are_404_and_other_methods_405() {
    let (d, addr) = start(common::daemon().model(default_model()));
    for path in ["/", "/v2", "/v2/health", "/v2/health/dead", "/metrics/x"] {
        assert_eq!(get(&addr, path).status, 404, "{path}");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let a = curl(&["-X", method], &format!("http://{addr}/metrics"));
        assert_eq!(a.status, 405, "{method}: {a:?}");
        assert!(a.headers.contains("allow: get, head"), "{a:?}");
    }
    let a = curl(&["-I"], &format!("http://{addr}/v2/health/live"));
    assert_eq!((a.status, a.body.trim()), (200, ""));
    assert_no_seccomp_refusal(&d);
}

/// The families of a scrape, by name, with their samples.
fn families(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("a Prometheus text exposition")
}

fn sample_value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no {name} {labels:?} in {:#?}", s.samples));
    match &found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => *v,
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn a_scrape_has_the_families_operators_chart() {
    let model = Model::load(&default_model()).unwrap();
    let (d, addr) = start(common::daemon().model(default_model()).queues(2).admin());
    let fe = Frontend::connect(d.socket(), 2).expect("frontend connects");
    for (id, samples) in [(1, 1), (2, 3), (3, 3)] {
        let (hdr, x) = request(&model, id, samples);
        let out = model.mlp.output_dim() * samples as usize;
        fe.start(0, &hdr, &x, out).unwrap();
        let r = fe.next_response(0, TIMEOUT).unwrap();
        assert_eq!(r.header.unwrap().status, STATUS_OK);
    }
    // A refused load.
    let r = d
        .admin_request(r#"{"cmd":"load","path":"/nonexistent.safetensors"}"#)
        .unwrap();
    assert_eq!(r["ok"], false);

    let a = get(&addr, "/metrics");
    assert_eq!(a.status, 200);
    assert!(
        a.headers
            .contains("content-type: text/plain; version=0.0.4"),
        "{a:?}"
    );
    let s = families(&a.body);
    let types: std::collections::HashMap<&str, &str> = a
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    for (family, kind) in [
        ("virtio_nn_requests_total", "counter"),
        ("virtio_nn_samples_total", "counter"),
        ("virtio_nn_request_latency_seconds", "histogram"),
        ("virtio_nn_request_samples", "histogram"),
        ("virtio_nn_requests_in_flight", "gauge"),
        ("virtio_nn_model_info", "gauge"),
        ("virtio_nn_model_generation", "gauge"),
        ("virtio_nn_model_swaps_total", "counter"),
        ("virtio_nn_model_swap_failures_total", "counter"),
        ("virtio_nn_worker_restarts_total", "counter"),
    ] {
        assert_eq!(types.get(family), Some(&kind), "{family}: {}", a.body);
    }
    let ok0 = [("queue", "0"), ("status", "ok")];
    assert_eq!(sample_value(&s, "virtio_nn_requests_total", &ok0), 3.0);
    assert_eq!(
        sample_value(&s, "virtio_nn_samples_total", &[("queue", "0")]),
        7.0
    );
    assert_eq!(
        sample_value(&s, "virtio_nn_requests_in_flight", &[("queue", "1")]),
        0.0
    );
    let checksum = format!("crc32c:{:08x}", model.checksum);
    // (prometheus-parse cuts label values at commas, as in the default
    // model's name: the name is checked on the raw line.)
    assert_eq!(
        sample_value(&s, "virtio_nn_model_info", &[("checksum", &checksum)]),
        1.0
    );
    let name_label = format!("virtio_nn_model_info{{name=\"{}\",", model.name);
    assert!(a.body.contains(&name_label), "{}", a.body);
    assert_eq!(sample_value(&s, "virtio_nn_model_generation", &[]), 1.0);
    assert_eq!(
        sample_value(&s, "virtio_nn_model_swap_failures_total", &[]),
        1.0
    );
    assert_eq!(
        sample_value(&s, "virtio_nn_worker_restarts_total", &[]),
        0.0
    );
    // The batch-size histogram: 1 request of 1 sample, 2 of 3.
    let batch = s
        .samples
        .iter()
        .find(|x| x.metric == "virtio_nn_request_samples" && x.labels.get("queue") == Some("0"))
        .expect("request_samples of queue 0");
    match &batch.value {
        prometheus_parse::Value::Histogram(h) => {
            let count = |le: f64| {
                h.iter()
                    .find(|b| b.less_than == le)
                    .map(|b| b.count)
                    .expect("bucket")
            };
            assert_eq!((count(1.0), count(2.0), count(4.0)), (1.0, 1.0, 3.0));
        }
        other => panic!("request_samples: {other:?}"),
    }

    // OpenMetrics when asked for.
    let a = curl(
        &["-H", "Accept: application/openmetrics-text; version=1.0.0"],
        &format!("http://{addr}/metrics"),
    );
    assert!(
        a.headers
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{a:?}"
    );
    assert!(a.body.ends_with("# EOF\n"));
    assert!(a.body.contains("# TYPE virtio_nn_requests counter"));
    assert_no_seccomp_refusal(&d);
}

/// Sends `bytes` and reads the answer until the daemon closes.
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(READ_TIMEOUT + TIMEOUT)).unwrap();
    // The daemon may answer and close before it has read everything.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn oversized_and_slow_clients_are_bounded() {
    let (d, addr) = start(common::daemon().model(default_model()));
    // A head over the limit: 431, and the next client is served.
    let mut big = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
    big.resize(MAX_HEAD * 4, b'a');
    let a = raw(&addr, &big);
    assert!(a.starts_with("HTTP/1.1 431 "), "{a}");
    assert_eq!(get(&addr, "/v2/health/live").status, 200);
    let a = raw(
        &addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789",
    );
    assert!(a.starts_with("HTTP/1.1 413 "), "{a}");
    let a = raw(&addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 400 "), "{a}");

    // Clients that never finish their request fill every slot: the next one
    // is refused at once, but nothing hangs; once they time out, serving
    // resumes.
    let started = Instant::now();
    let slow: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let a = get(&addr, "/v2/health/live");
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.body.contains("too many connections"), "{a:?}");
    // The slow ones are told so and closed within the read deadline.
    for mut s in slow {
        s.set_read_timeout(Some(READ_TIMEOUT + TIMEOUT)).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    }
    assert!(
        started.elapsed() < READ_TIMEOUT + Duration::from_secs(3),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(get(&addr, "/v2/health/live").status, 200);

    // A client trickling one byte at a time cannot stretch the deadline.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    for b in b"GET /metrics HTTP/1.1\r\nX-Slow: ".iter().cycle() {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < READ_TIMEOUT + TIMEOUT,
            "the trickle is still served"
        );
    }
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert_eq!(get(&addr, "/v2/health/live").status, 200);
    assert_no_seccomp_refusal(&d);
}

#[test]
fn a_unix_socket_serves_the_same_and_remote_addresses_need_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("http.sock");
    let d = common::daemon()
        .model(default_model())
        .arg("--http")
        .arg(&sock)
        .start()
        .expect("daemon starts");
    let deadline = Instant::now() + TIMEOUT;
    while !Path::new(&sock).exists() {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = curl(
        &["--unix-socket", sock.to_str().unwrap()],
        "http://localhost/v2/health/live",
    );
    assert_eq!(a.status, 200, "{a:?}");
    drop(d);

    // Without the supervisor the daemon binds and serves it itself.
    let (d, addr) = start(
        common::daemon()
            .model(default_model())
            .arg("--no-supervisor"),
    );
    assert_eq!(get(&addr, "/v2/health/live").status, 200);
    assert_eq!(get(&addr, "/metrics").status, 200);
    assert_no_seccomp_refusal(&d);
    drop(d);

    let err = common::daemon()
        .model(default_model())
        .arg("--http")
        .arg("0.0.0.0:0")
        .start()
        .err()
        .expect("a remote address is refused");
    assert!(err.to_string().contains("--http-allow-remote"), "{err}");
    let err = common::daemon()
        .arg("--http")
        .arg("localhost")
        .start()
        .err()
        .expect("a bad address is refused");
    assert!(err.to_string().contains("neither IP:PORT"), "{err}");
}

#[test]
fn the_endpoint_outlives_a_worker_and_counts_its_restart() {
    let (d, addr) = start(common::daemon().model(default_model()).admin());
    let pid = d.admin_request(r#"{"cmd":"status"}"#).unwrap()["pid"]
        .as_u64()
        .unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .expect("the worker exists");
    // The supervisor holds the listening socket: the next worker answers on
    // the same address, and counts the restart.
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let a = get(&addr, "/metrics");
        if a.status == 200 && a.body.contains("virtio_nn_worker_restarts_total 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{a:?}\n{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(&addr, "/v2/health/live").status, 200);
    assert_no_seccomp_refusal(&d);
}

/// A stopped worker process (SIGSTOP) answers nothing, so a probe with a
/// deadline fails (the endpoint lives in the worker: a process that cannot
/// run cannot claim to be ready); after SIGCONT it answers again.
#[test]
fn a_stopped_worker_fails_probes_until_it_continues() {
    use rustix::process::{kill_process, Pid, Signal};
    let (d, addr) = start(common::daemon().model(default_model()).admin());
    let _fe = Frontend::connect(d.socket(), 1).expect("frontend connects");
    wait_status(&d, &addr, "/v2/health/ready", 200, TIMEOUT);
    let pid = d.admin_request(r#"{"cmd":"status"}"#).unwrap()["pid"]
        .as_u64()
        .unwrap();
    let pid = Pid::from_raw(pid as i32).unwrap();
    kill_process(pid, Signal::STOP).expect("the worker exists");
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "1"])
        .arg(format!("http://{addr}/v2/health/ready"))
        .status()
        .expect("curl runs");
    kill_process(pid, Signal::CONT).expect("the worker exists");
    assert_eq!(out.code(), Some(28), "curl timed out (exit 28)");
    wait_status(&d, &addr, "/v2/health/ready", 200, TIMEOUT);
    assert_no_seccomp_refusal(&d);
}
