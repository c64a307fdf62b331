// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The sandbox as the daemon installs it, seen from inside.
//!
//! The seccomp probes run in a child process: this test binary run again
//! with [`PROBE`] set, where the test `probe` installs the worker's real
//! filters in their production mode (`sandbox::apply`, every thread) and
//! makes each call, printing one `name=result` line per call. A filter
//! cannot be taken off, so the parent test process stays unfiltered. The
//! daemon tests (`load` outside the model directory, `--user`) run the real
//! binary.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::json;
use vhost_user_nn::sandbox::{self, Mode};

/// Which probe the child runs (unset: the `probe` test does nothing).
const PROBE: &str = "VHOST_USER_NN_SANDBOX_PROBE";
/// A directory the probe may use.
const PROBE_DIR: &str = "VHOST_USER_NN_SANDBOX_PROBE_DIR";

/// Runs this binary's `probe` test as a child with `PROBE=kind`.
fn run_probe(kind: &str, dir: &Path) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["probe", "--exact", "--nocapture", "--test-threads=1"])
        .env(PROBE, kind)
        .env(PROBE_DIR, dir)
        .output()
        .expect("the probe runs")
}

/// The `name=result` lines of a probe's stdout.
fn results(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once("PROBE ").map(|(_, r)| r))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// "ok" for a non-negative return, else "errno N".
fn outcome(ret: i64) -> String {
    if ret >= 0 {
        "ok".into()
    } else {
        format!(
            "errno {}",
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        )
    }
}

fn report(name: &str, result: String) {
    println!("PROBE {name}={result}");
    let _ = std::io::stdout().flush();
}

/// The child's side: does nothing unless [`PROBE`] is set.
#[test]
fn probe() {
    let Ok(kind) = std::env::var(PROBE) else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var(PROBE_DIR).unwrap());
    match kind.as_str() {
        "worker" => worker_probe(&dir),
        "kill" => {
            sandbox::apply(Mode::Kill).unwrap();
            report("installed", "ok".into());
            let r = std::fs::File::create(dir.join("killed"));
            report("create", format!("{:?}", r.map(drop)));
        }
        "landlock" => {
            let (a, b) = (dir.join("a"), dir.join("b"));
            sandbox::confine_reads(std::slice::from_ref(&a), &[]).unwrap();
            let read = |p: &Path| match std::fs::read(p) {
                Ok(_) => "ok".to_string(),
                Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
            };
            report("inside", read(&a.join("m")));
            report("outside", read(&b.join("m")));
            report("link_out", read(&a.join("link")));
            report(
                "may_read_outside",
                format!("{:?}", sandbox::may_read(&b.join("m"))),
            );
        }
        other => panic!("unknown probe {other}"),
    }
    // The harness's own output is not needed (and runs no more code under
    // the filter than necessary).
    std::process::exit(0);
}

/// Under the worker's filters (trap mode, every thread): each forbidden
/// call, and the allowed ones next to it.
fn worker_probe(dir: &Path) {
    // What the filter would refuse (readlink, getppid) is looked up first.
    let exe = std::env::current_exe().unwrap();
    let readable = std::fs::File::open(&exe).unwrap();
    let ppid = i64::from(std::os::unix::process::parent_id());
    let pid = i64::from(std::process::id());
    let (socket, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    sandbox::apply(Mode::Trap).unwrap();
    report("installed", "ok".into());

    let w = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("written"));
    report(
        "open_write_create",
        format!("{:?}", w.map(drop).map_err(|e| e.raw_os_error())),
    );
    let ro = std::fs::File::open(&exe);
    report(
        "open_read",
        format!("{:?}", ro.map(drop).map_err(|e| e.raw_os_error())),
    );

    let map = |prot: libc::c_int| {
        // SAFETY: a new anonymous private mapping, touched by nothing else.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        (p != libc::MAP_FAILED).then_some(p)
    };
    let exec = map(libc::PROT_READ | libc::PROT_EXEC);
    report("mmap_exec", outcome(if exec.is_some() { 0 } else { -1 }));
    let rw = map(libc::PROT_READ | libc::PROT_WRITE);
    report("mmap_rw", outcome(if rw.is_some() { 0 } else { -1 }));
    if let Some(p) = rw {
        // SAFETY: `p` is the 4096-byte mapping just made, used by nothing.
        let r = unsafe { libc::mprotect(p, 4096, libc::PROT_READ | libc::PROT_EXEC) };
        report("mprotect_exec", outcome(r.into()));
        // SAFETY: as above.
        let r = unsafe { libc::mprotect(p, 4096, libc::PROT_READ) };
        report("mprotect_ro", outcome(r.into()));
    }

    // Signal 0: nothing is delivered even where the call is allowed.
    // SAFETY: tgkill with signal 0 only checks the target.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, ppid, ppid, 0) };
    report("tgkill_foreign", outcome(r));
    // SAFETY: as above, on this thread.
    let r = unsafe { libc::syscall(libc::SYS_tgkill, pid, libc::gettid(), 0) };
    report("tgkill_own", outcome(r));

    // SAFETY: a child, if one is made, only calls _exit.
    let child = unsafe { libc::fork() };
    if child == 0 {
        // SAFETY: leaving the forked child at once, without running
        // anything of the parent's.
        unsafe { libc::_exit(0) };
    }
    if child > 0 {
        // SAFETY: reaping the child just made.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
    }
    report("fork", outcome(child.into()));
    // SAFETY: clone3 with no arguments: refused or EINVAL, nothing made.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
    report("clone3", outcome(r));
    let t = std::thread::spawn(|| 42).join();
    report("thread", format!("{t:?}"));

    let mut ws: libc::winsize =
        // SAFETY: winsize is plain data.
        unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize, which `ws` is.
    let r = unsafe { libc::ioctl(readable.as_raw_fd(), libc::TIOCGWINSZ, &raw mut ws) };
    report("ioctl_tiocgwinsz", outcome(r.into()));
    report(
        "ioctl_fionbio",
        format!("{:?}", socket.set_nonblocking(true)),
    );

    // SAFETY: prlimit64 reading one rlimit into `old`.
    let mut old: libc::rlimit64 = unsafe { std::mem::zeroed() };
    let get = |pid: i64, old: &mut libc::rlimit64| {
        // SAFETY: no new limit; `old` is writable.
        unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                pid,
                libc::RLIMIT_NOFILE,
                std::ptr::null::<libc::rlimit64>(),
                std::ptr::from_mut(old),
            )
        }
    };
    report("prlimit_foreign", outcome(get(ppid, &mut old)));
    report("prlimit_self", outcome(get(0, &mut old)));
    let new = old;
    // SAFETY: sets this process's NOFILE limit to what it is.
    let r = unsafe {
        libc::syscall(
            libc::SYS_prlimit64,
            0,
            libc::RLIMIT_NOFILE,
            std::ptr::from_ref(&new),
            std::ptr::null_mut::<libc::rlimit64>(),
        )
    };
    report("prlimit_set", outcome(r));
    // SAFETY: socket takes integers.
    let r = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    report("socket_inet", outcome(r.into()));
}

fn eperm() -> String {
    format!("errno {}", libc::EPERM)
}

#[test]
fn under_the_workers_filter_each_forbidden_call_is_refused_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_probe("worker", dir.path());
    let r = results(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {r:?}\n{stderr}", out.status);
    let got = |k: &str| {
        r.get(k)
            .cloned()
            .unwrap_or_else(|| panic!("no {k}: {r:?}\n{stderr}"))
    };
    assert_eq!(got("installed"), "ok");
    assert_eq!(
        got("open_write_create"),
        format!("Err(Some({}))", libc::EPERM)
    );
    assert!(!dir.path().join("written").exists(), "the file was created");
    assert_eq!(got("open_read"), "Ok(())");
    assert_eq!(got("mmap_exec"), eperm());
    assert_eq!(got("mmap_rw"), "ok");
    assert_eq!(got("mprotect_exec"), eperm());
    assert_eq!(got("mprotect_ro"), "ok");
    assert_eq!(got("tgkill_foreign"), eperm());
    assert_eq!(got("tgkill_own"), "ok");
    assert_eq!(got("fork"), eperm());
    assert_eq!(got("clone3"), format!("errno {}", libc::ENOSYS));
    assert_eq!(got("thread"), "Ok(42)");
    assert_eq!(got("ioctl_tiocgwinsz"), eperm());
    assert_eq!(got("ioctl_fionbio"), "Ok(())");
    assert_eq!(got("prlimit_foreign"), eperm());
    assert_eq!(got("prlimit_self"), "ok");
    assert_eq!(got("prlimit_set"), eperm());
    assert_eq!(got("socket_inet"), eperm());
    // The trap's line, once per refused call (clone3's ENOSYS is silent).
    for nr in [
        libc::SYS_openat,
        libc::SYS_mmap,
        libc::SYS_mprotect,
        libc::SYS_tgkill,
        libc::SYS_clone,
        libc::SYS_ioctl,
        libc::SYS_prlimit64,
        libc::SYS_socket,
    ] {
        let line = format!("seccomp: system call {nr} refused");
        assert!(stderr.contains(&line), "no `{line}` in:\n{stderr}");
    }
    let clone3 = format!("seccomp: system call {} refused", libc::SYS_clone3);
    assert!(!stderr.contains(&clone3), "{stderr}");
}

#[test]
fn in_kill_mode_a_forbidden_call_kills_the_process_with_sigsys() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_probe("kill", dir.path());
    let r = results(&out);
    assert_eq!(r.get("installed").map(String::as_str), Some("ok"));
    assert_eq!(r.get("create"), None, "survived: {r:?}");
    assert_eq!(out.status.signal(), Some(libc::SIGSYS), "{:?}", out.status);
    assert!(!dir.path().join("killed").exists());
}

/// Whether this kernel has Landlock (the LSM list, else the syscall).
fn landlock_available() -> bool {
    if let Ok(lsm) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return lsm.split(',').any(|l| l.trim() == "landlock");
    }
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI.
    let abi = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    abi > 0
}

fn two_model_dirs() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let bytes = common::model(&[16, 8, 4], 3, "m").to_bytes();
    std::fs::write(a.join("m"), &bytes).unwrap();
    std::fs::write(b.join("m"), &bytes).unwrap();
    std::os::unix::fs::symlink(b.join("m"), a.join("link")).unwrap();
    (dir, a, b)
}

#[test]
fn landlock_refuses_a_read_outside_the_allowed_directory() {
    if !landlock_available() {
        eprintln!("\n*** SKIPPED: this kernel has no Landlock; reads are not confined ***\n");
        return;
    }
    let (dir, _, _) = two_model_dirs();
    let out = run_probe("landlock", dir.path());
    let r = results(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{r:?}\n{stderr}");
    let eacces = format!("errno {}", libc::EACCES);
    assert_eq!(r["inside"], "ok", "{r:?}");
    assert_eq!(r["outside"], eacces, "{r:?}");
    assert_eq!(r["link_out"], eacces, "{r:?}");
    assert!(r["may_read_outside"].contains("--allow-model-dir"), "{r:?}");
}

fn admin(d: &vhost_user_nn::testing::daemon::Daemon, req: serde_json::Value) -> serde_json::Value {
    d.admin_request(&req.to_string()).expect("admin answers")
}

/// The real daemon: a `load` outside the model's directory is answered
/// with a refusal that names `--allow-model-dir`, the daemon keeps serving,
/// and a directory given with `--allow-model-dir` may be loaded from.
#[test]
fn a_load_outside_the_model_directories_is_refused_with_a_clear_answer() {
    if !landlock_available() {
        eprintln!("\n*** SKIPPED: this kernel has no Landlock; reads are not confined ***\n");
        return;
    }
    let (_dir, a, b) = two_model_dirs();
    let daemon = common::daemon()
        .model(a.join("m"))
        .admin()
        .start()
        .expect("daemon starts");
    let r = admin(&daemon, json!({"cmd": "load", "path": b.join("m")}));
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("--allow-model-dir"), "{e}");
    // A link out of the directory: Landlock's refusal, explained.
    let r = admin(&daemon, json!({"cmd": "load", "path": a.join("link")}));
    assert_eq!(r["ok"], false, "{r}");
    let e = r["error"].as_str().unwrap();
    assert!(
        e.contains("Permission denied") && e.contains("only under"),
        "{e}"
    );
    let r = admin(&daemon, json!({"cmd": "load", "path": a.join("m")}));
    assert_eq!(r["ok"], true, "{r}");
    drop(daemon);

    let daemon = common::daemon()
        .model(a.join("m"))
        .arg("--allow-model-dir")
        .arg(&a)
        .arg("--allow-model-dir")
        .arg(&b)
        .admin()
        .start()
        .expect("daemon starts");
    let r = admin(&daemon, json!({"cmd": "load", "path": b.join("m")}));
    assert_eq!(r["ok"], true, "{r}");
    assert!(
        !daemon.log().contains("seccomp: system call"),
        "{}",
        daemon.log()
    );
}

/// The `Uid:` and `Gid:` lines of /proc/PID/status.
fn ids(pid: u64) -> (String, String) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .map(|l| {
                l[k.len()..]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap()
    };
    (line("Uid:"), line("Gid:"))
}

#[test]
fn with_user_the_supervisor_and_its_worker_run_as_that_user() {
    if common::skip_unless_root("--user") {
        return;
    }
    // Workers are started after the drop: nobody must be able to run the
    // binary and read the model's directory.
    let (_dir, bin, model) = common::world_accessible_daemon();
    let daemon = vhost_user_nn::testing::daemon::Daemon::builder(&bin)
        .model(&model)
        .arg("--user")
        .arg("nobody")
        .admin()
        .start()
        .expect("daemon starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let s = admin(&daemon, json!({"cmd": "status"}));
        if s["ok"] == true || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let worker = status["pid"].as_u64().expect("a worker pid");
    let supervisor = status["supervisor"]["pid"]
        .as_u64()
        .expect("a supervisor pid");
    let nobody = (
        "65534 65534 65534 65534".to_string(),
        "65534 65534 65534 65534".to_string(),
    );
    assert_eq!(ids(worker), nobody, "worker");
    assert_eq!(ids(supervisor), nobody, "supervisor");
    let groups = std::fs::read_to_string(format!("/proc/{worker}/status")).unwrap();
    let groups = groups.lines().find(|l| l.starts_with("Groups:")).unwrap();
    assert_eq!(
        groups.split_whitespace().collect::<Vec<_>>(),
        ["Groups:", "65534"]
    );
    // It serves: a request through a frontend gets an answer.
    let fe = vhost_user_nn::testing::frontend::Frontend::connect(daemon.socket(), 1)
        .expect("frontend connects");
    let x: Vec<i32> = (0..16).map(|i| i * 1000).collect();
    let (h, y) = fe.predict_dims(0, 1, &x, 1, 4).expect("an answer");
    assert_eq!((h.status, y.len()), (nn_core::protocol::STATUS_OK, 4));
    let log = daemon.log();
    assert!(!log.contains("seccomp: system call"), "{log}");
}

/// `--seccomp kill`: a worker killed by SIGSYS is restarted, and the
/// supervisor's log says it was seccomp. (The signal is sent from here:
/// no call the worker makes is refused on purpose.)
#[test]
fn in_kill_mode_the_supervisor_names_a_sigsys_death_seccomp() {
    let daemon = common::daemon()
        .model(common::default_model())
        .arg("--seccomp")
        .arg("kill")
        .admin()
        .start()
        .expect("daemon starts");
    let pid_of = |d: &vhost_user_nn::testing::daemon::Daemon| {
        d.admin_request(&json!({"cmd": "status"}).to_string())
            .ok()
            .and_then(|s| s["pid"].as_u64())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let first = loop {
        if let Some(p) = pid_of(&daemon) {
            break p;
        }
        assert!(Instant::now() < deadline, "no status: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill takes integers; `first` is the daemon's worker.
    assert_eq!(unsafe { libc::kill(first as libc::pid_t, libc::SIGSYS) }, 0);
    loop {
        if pid_of(&daemon).is_some_and(|p| p != first) {
            break;
        }
        assert!(Instant::now() < deadline, "no restart: {}", daemon.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = daemon.log();
    assert!(log.contains("killed by SIGSYS (seccomp)"), "{log}");
}
