// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The admin socket against hostile or careless clients, through the real
//! daemon (the binary of this build, see `common/mod.rs`): peers of another
//! uid (a child process setuid to 65534), a client sending one byte a
//! second, two loads at once, something else at the admin socket's path, a
//! FIFO and a model with an oversized name.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vhost_user_nn::admin;
use vhost_user_nn::testing::daemon::Daemon;

/// The uid and gid of `nobody`, which the tests run as root switch to.
const NOBODY: u32 = 65534;

fn admin(d: &Daemon, req: Value) -> Value {
    d.admin_request(&req.to_string()).expect("admin answers")
}

/// `vhost-user-nn ctl --admin-socket PATH status`, run by a child that
/// drops to uid and gid 65534 (fork, setgroups, setgid, setuid, exec).
fn ctl_status_as_nobody(socket: &Path) -> (bool, String) {
    let (_dir, bin, _) = common::world_accessible_daemon();
    let out = Command::new(&bin)
        .args(["ctl", "--admin-socket"])
        .arg(socket)
        .arg("status")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .output()
        .expect("ctl runs");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn skip_unless_root() -> bool {
    common::skip_unless_root(&format!("switching to uid {NOBODY}"))
}

#[test]
fn a_peer_of_another_uid_is_refused_unless_allowed() {
    if skip_unless_root() {
        return;
    }
    // Mode 666: the file mode lets nobody connect; only SO_PEERCRED stops it.
    let d = common::daemon()
        .admin()
        .arg("--admin-socket-mode")
        .arg("666")
        .arg("--admin-allow-gid")
        .arg("4242")
        .start()
        .expect("daemon starts");
    let (ok, text) = ctl_status_as_nobody(d.admin_socket().unwrap());
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("permission denied (uid {NOBODY})")),
        "{text}"
    );
    // Root is still served, and sees the refusal counted and logged.
    let st = admin(&d, json!({"cmd": "status"}));
    assert_eq!(st["admin"]["refused"], 1, "{st}");
    assert!(
        d.log()
            .contains(&format!("refused a client (uid {NOBODY}, gid {NOBODY}")),
        "{}",
        d.log()
    );

    // Allowed by uid, or by gid: served.
    for allow in ["--admin-allow-uid", "--admin-allow-gid"] {
        let d = common::daemon()
            .admin()
            .arg("--admin-socket-mode")
            .arg("666")
            .arg(allow)
            .arg(NOBODY.to_string())
            .start()
            .expect("daemon starts");
        let (ok, text) = ctl_status_as_nobody(d.admin_socket().unwrap());
        assert!(ok, "{allow}: {text}");
        assert!(text.contains("\"generation\""), "{allow}: {text}");
    }
}

#[test]
fn a_client_sending_one_byte_a_second_is_closed_at_the_deadline() {
    let d = common::daemon()
        .admin()
        .arg("--admin-timeout-ms")
        .arg("3000")
        .start()
        .expect("daemon starts");
    let path = d.admin_socket().unwrap().to_path_buf();
    let slow = UnixStream::connect(&path).unwrap();
    let start = Instant::now();
    let writer = {
        let mut s = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            // 17 bytes at one a second: 17 s for the whole request.
            for b in b"{\"cmd\":\"status\"}\n" {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // Meanwhile, other clients are served at once.
    for _ in 0..5 {
        let t = Instant::now();
        let st = admin::request(&path, r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(st["ok"], true, "{st}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut r = BufReader::new(slow);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let waited = start.elapsed();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().starts_with("timeout"),
        "{reply}"
    );
    assert!(
        waited >= Duration::from_millis(2900) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    // Then the connection is closed.
    line.clear();
    assert_eq!(r.read_line(&mut line).unwrap(), 0, "{line}");
    writer.join().unwrap();
    let st = admin(&d, json!({"cmd": "status"}));
    assert_eq!(st["admin"]["timed_out"], 1, "{st}");
}

/// A temporary directory and a daemon (default model, admin socket) that
/// may load model files from it.
fn daemon_loading_from_a_temp_dir() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let d = common::daemon()
        .model(common::default_model())
        .admin()
        .arg("--allow-model-dir")
        .arg(dir.path())
        .start()
        .expect("daemon starts");
    (dir, d)
}

#[test]
fn loads_run_one_at_a_time_and_generations_follow_the_swaps() {
    let (dir, d) = daemon_loading_from_a_temp_dir();
    // A 32 MiB model takes a while to read, check and hand over; a small
    // one is loaded over and over while it does.
    let big_model = common::model(&[4096, 2048], 1, "big");
    let big = dir.path().join("big.safetensors");
    std::fs::write(&big, big_model.to_bytes()).unwrap();
    let small_model = common::model(&[16, 8, 4], 2, "small");
    let small = dir.path().join("small.safetensors");
    std::fs::write(&small, small_model.to_bytes()).unwrap();
    let checksum = |m: &nn_core::Model| format!("crc32c:{:08x}", m.checksum);

    let path = d.admin_socket().unwrap().to_path_buf();
    let big_load = {
        let (path, big) = (path.clone(), big.clone());
        // Itself refused while a small one runs: tried again.
        std::thread::spawn(move || loop {
            let req = json!({"cmd": "load", "path": big}).to_string();
            let r = admin::request(&path, &req).unwrap();
            if r["error"] != admin::BUSY {
                return r;
            }
            std::thread::sleep(Duration::from_millis(2));
        })
    };
    // (generation, checksum) of every load that swapped.
    let mut swapped = Vec::new();
    let mut busy = 0;
    while !big_load.is_finished() {
        let r = admin(&d, json!({"cmd": "load", "path": small}));
        if r["ok"] == true {
            swapped.push((r["generation"].as_u64().unwrap(), checksum(&small_model)));
        } else {
            assert_eq!(r["error"], admin::BUSY, "{r}");
            busy += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = big_load.join().unwrap();
    assert_eq!(r["ok"], true, "{r}");
    swapped.push((r["generation"].as_u64().unwrap(), checksum(&big_model)));
    eprintln!("{} swaps, {busy} loads refused as busy", swapped.len());
    assert!(busy > 0, "no load was refused while the big one ran");

    // Every swap took the next generation; the last one serves.
    swapped.sort();
    let gens: Vec<u64> = swapped.iter().map(|(g, _)| *g).collect();
    let want: Vec<u64> = (2..2 + gens.len() as u64).collect();
    assert_eq!(gens, want);
    let st = admin(&d, json!({"cmd": "status"}));
    let (last_gen, last_sum) = swapped.last().unwrap();
    assert_eq!(st["generation"], *last_gen, "{st}");
    assert_eq!(st["model"]["checksum"], *last_sum, "{st}");
    let stats = admin(&d, json!({"cmd": "stats"}));
    assert_eq!(
        (&stats["swaps"], &stats["swap_failures"]),
        (&json!(gens.len()), &json!(0)),
        "{stats}"
    );
}

/// Runs the daemon with `--admin-socket admin_path` and returns its log; it
/// must fail to start.
fn fails_to_start(admin_path: &Path) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::DAEMON)
        .arg("--socket-path")
        .arg(dir.path().join("nn.sock"))
        .arg("--admin-socket")
        .arg(admin_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let log = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(!status.success(), "{log}");
            return log;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started on {}", admin_path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_admin_path_is_never_followed_or_replaced_but_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let sub = dir.path().join("dir");
    std::fs::create_dir(&sub).unwrap();
    for (path, what) in [
        (&file, "a regular file"),
        (&link, "a symlink"),
        (&sub, "a directory"),
    ] {
        let log = fails_to_start(path);
        assert!(log.contains(&format!("is {what}")), "{log}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    assert_eq!(std::fs::read_link(&link).unwrap(), file);
    assert!(sub.is_dir());

    // A stale socket (its daemon killed) is replaced, and served.
    let stale = dir.path().join("admin.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let _d = common::daemon()
        .arg("--admin-socket")
        .arg(&stale)
        .start()
        .expect("daemon starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match admin::request(&stale, r#"{"cmd":"status"}"#) {
            Ok(r) if r["ok"] == true => break,
            r => assert!(Instant::now() < deadline, "not served: {r:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_fifo_or_an_oversized_name_is_refused_at_once() {
    let (dir, d) = daemon_loading_from_a_temp_dir();
    let mut m = common::model(&[4, 2], 3, "");
    m.name = "x".repeat(nn_core::model::MAX_NAME_LEN + 1);
    let long = dir.path().join("long.safetensors");
    std::fs::write(&long, m.to_bytes()).unwrap();
    let r = admin(&d, json!({"cmd": "load", "path": long}));
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("metadata `name` is 257 bytes"),
        "{r}"
    );

    let fifo = dir.path().join("fifo.safetensors");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    // No writer ever opens it: a reader that waits for one waits forever.
    let mut s = UnixStream::connect(d.admin_socket().unwrap()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    writeln!(s, "{}", json!({"cmd": "load", "path": fifo})).unwrap();
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .expect("an answer within 10 s");
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["ok"], false, "{r}");
    assert!(
        r["error"].as_str().unwrap().contains("not a regular file"),
        "{r}"
    );
    assert_eq!(admin(&d, json!({"cmd": "status"}))["generation"], 1);
}

/// `--no-supervisor`: the single process binds the admin socket itself,
/// before Landlock confines it (which allows making socket files only, not
/// the private directory and the link of `admin::bind`).
#[test]
fn a_single_process_daemon_binds_its_admin_socket_before_landlock() {
    let d = common::daemon()
        .model(common::default_model())
        .admin()
        .arg("--no-supervisor")
        .start()
        .expect("daemon starts");
    let st = admin(&d, json!({"cmd": "status"}));
    assert_eq!((&st["ok"], &st["generation"]), (&json!(true), &json!(1)));
    let mode = std::fs::symlink_metadata(d.admin_socket().unwrap())
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
}

/// With `--user`, the daemon's own uid is that user's: its clients are
/// served (under the supervisor the workers run as it; a single process
/// drops to it after the admin socket is up).
#[test]
fn the_user_a_daemon_runs_as_may_use_its_admin_socket() {
    if skip_unless_root() {
        return;
    }
    // Workers are started after the drop: nobody must be able to run the
    // binary and read the model's directory.
    let (_dir, bin, model) = common::world_accessible_daemon();
    for single in [false, true] {
        let mut b = Daemon::builder(&bin)
            .model(&model)
            .admin()
            .arg("--admin-socket-mode")
            .arg("666")
            .arg("--user")
            .arg(format!("{NOBODY}:{NOBODY}"));
        if single {
            b = b.arg("--no-supervisor");
        }
        let d = b.start().expect("daemon starts");
        let (ok, text) = ctl_status_as_nobody(d.admin_socket().unwrap());
        assert!(ok, "single process: {single}: {text}\n{}", d.log());
        assert!(text.contains("\"generation\": 1"), "{text}");
    }
}
