// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The admin socket: a Unix socket speaking line-delimited JSON.
//!
//! Each request is one line holding one JSON object with a `cmd` field:
//!
//! | request | reply (besides `"ok": true`) |
//! |---|---|
//! | `{"cmd":"status"}` | `generation`, `model` (name, dims, checksum, path), `queues`, `uptime_s` |
//! | `{"cmd":"health"}` | `healthy` (every check passes), `status` (the config space's: `ready` or `error`), `checks`: each with `check` (`model`, `frontend`, `worker` + `queue`), `ok`, `state`, `reason` (see [`crate::health`]) |
//! | `{"cmd":"stats"}` | `queues` (per queue ok/errors/samples), `swaps`, `swap_failures` |
//! | `{"cmd":"metrics"}` | `text`: the Prometheus text exposition |
//! | `{"cmd":"load","path":"FILE"}` | `generation`, `model`: FILE validated and swapped in |
//! | `{"cmd":"upgrade","binary":"FILE"?}` | the supervisor replaces this worker (no reply then: the connection closes) or refuses |
//! | `{"cmd":"test-delay","ms":N}` | test-only (`--test-mode`): delay every request by N ms |
//!
//! Every failure is a reply `{"ok": false, "error": "..."}`: malformed JSON,
//! unknown commands or fields, lines over [`MAX_LINE`] bytes (the connection
//! is then closed), models that fail validation (the old model keeps
//! serving). Clients are served concurrently, one thread each, up to
//! [`MAX_CLIENTS`].

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use nn_core::kernels::Kernel;
use nn_core::Model;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::device::NnDevice;
use crate::stats::Stats;

/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Most clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 32;
/// A client that sends nothing for this long is disconnected.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One admin request. (The commands without arguments are empty struct
/// variants so that `deny_unknown_fields` applies to them too.)
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// What is served.
    Status {},
    /// Whether the device is healthy.
    Health {},
    /// Per-queue totals.
    Stats {},
    /// Prometheus text exposition.
    Metrics {},
    /// Validate a model file and swap it in.
    Load {
        /// The model file.
        path: PathBuf,
    },
    /// Replace the worker (supervised daemons), by one running `binary` if
    /// given.
    Upgrade {
        /// The new worker's executable.
        #[serde(default)]
        binary: Option<PathBuf>,
    },
    /// Test-only: make the device answer every request `ms` late.
    #[serde(rename = "test-delay")]
    TestDelay {
        /// Milliseconds; 0 restores normal service.
        ms: u64,
    },
}

/// Called with a validated model and the generation it is about to be
/// served under, before it serves; an error refuses the load. A supervised
/// worker hands the model to its supervisor here.
pub type Persist = Box<dyn Fn(&Model, u32, &Path) -> io::Result<()> + Send + Sync>;

/// Called for `upgrade`: asks the supervisor to replace the worker.
pub type Upgrade = Box<dyn Fn(Option<PathBuf>) -> io::Result<()> + Send + Sync>;

/// What the admin commands act on.
pub struct Admin {
    persist: Option<Persist>,
    upgrade: Option<Upgrade>,
    /// One load at a time: the generation handed to `persist` is the one
    /// the swap takes.
    loading: std::sync::Mutex<()>,
    device: Arc<NnDevice>,
    kernel: Kernel,
    test_mode: bool,
    stats: Arc<Stats>,
    started: Instant,
    clients: AtomicUsize,
}

/// The served model as JSON (`null` while none is loaded).
fn model_json(served: &crate::device::Served) -> Value {
    let Some(model) = &served.model else {
        return Value::Null;
    };
    json!({
        "name": model.name,
        "dims": model.mlp.dims(),
        "checksum": format!("crc32c:{:08x}", model.checksum),
        "path": served.source.display().to_string(),
    })
}

/// `model` with its network packed for `kernel`.
pub fn with_kernel(model: Model, kernel: Kernel) -> Result<Model, nn_core::kernels::Unsupported> {
    let Model {
        mlp,
        name,
        checksum,
    } = model;
    Ok(Model {
        mlp: mlp.with_kernel(kernel)?,
        name,
        checksum,
    })
}

fn error(msg: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": msg.to_string()})
}

impl Admin {
    /// Admin commands for `device`; loaded models run on `kernel` (one the
    /// CPU supports, checked at start-up).
    pub fn new(device: Arc<NnDevice>, stats: Arc<Stats>, kernel: Kernel) -> Self {
        Self {
            persist: None,
            upgrade: None,
            loading: std::sync::Mutex::new(()),
            device,
            kernel,
            test_mode: false,
            stats,
            started: Instant::now(),
            clients: AtomicUsize::new(0),
        }
    }

    /// Hands every model to `persist` before it serves.
    pub fn with_persist(mut self, persist: Persist) -> Self {
        self.persist = Some(persist);
        self
    }

    /// Serves `upgrade` through `upgrade` (without it, `upgrade` is refused).
    pub fn with_upgrade(mut self, upgrade: Upgrade) -> Self {
        self.upgrade = Some(upgrade);
        self
    }

    /// Enables the test-only commands (`test-delay`).
    pub fn with_test_mode(mut self, on: bool) -> Self {
        self.test_mode = on;
        self
    }

    /// Answers one request line.
    pub fn handle_line(&self, line: &str) -> Value {
        match serde_json::from_str::<Request>(line) {
            Ok(req) => self.handle(req),
            Err(e) => error(format!("bad request: {e}")),
        }
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Value {
        match req {
            Request::Status {} => {
                let served = self.device.current();
                json!({
                    "ok": true,
                    "generation": served.generation,
                    "model": model_json(&served),
                    "queues": self.device.num_req_queues(),
                    "uptime_s": self.started.elapsed().as_secs(),
                    "pid": std::process::id(),
                    "supervisor": crate::control::Info::from_env(),
                })
            }
            Request::Upgrade { binary } => match &self.upgrade {
                None => {
                    error("upgrade needs the supervisor (the daemon runs with --no-supervisor)")
                }
                // On success this worker is stopped before the call returns.
                Some(upgrade) => match upgrade(binary) {
                    Ok(()) => json!({"ok": true, "upgrading": true}),
                    Err(e) => error(format!("upgrade refused: {e}")),
                },
            },
            Request::Health {} => {
                let mut v =
                    serde_json::to_value(self.device.health_report()).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("ok".into(), Value::Bool(true));
                }
                v
            }
            Request::Stats {} => {
                let mut v = serde_json::to_value(self.stats.summary()).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("ok".into(), Value::Bool(true));
                }
                v
            }
            Request::Metrics {} => json!({"ok": true, "text": self.stats.encode()}),
            Request::Load { path } => self.load(&path),
            Request::TestDelay { .. } if !self.test_mode => {
                error("test-delay needs a daemon started with --test-mode")
            }
            Request::TestDelay { ms } => {
                warn!("admin: test delay of {ms} ms per request");
                self.device.set_test_delay(ms);
                json!({"ok": true, "delay_ms": ms})
            }
        }
    }

    fn load(&self, path: &Path) -> Value {
        // Validation happens here, on the admin thread, off the data path.
        let loaded = crate::sandbox::may_read(path)
            .and_then(|()| Model::load(path).map_err(|e| crate::sandbox::explain(e.to_string())))
            .and_then(|m| {
                with_kernel(m, self.kernel).map_err(|e| format!("{}: {e}", path.display()))
            });
        let _one_at_a_time = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        let loaded = loaded.and_then(|model| match &self.persist {
            Some(persist) => persist(&model, self.device.next_generation(), path)
                .map(|()| model)
                .map_err(|e| format!("cannot hand the model to the supervisor: {e}")),
            None => Ok(model),
        });
        match loaded {
            Ok(model) => {
                let generation = self.device.swap(model, path.to_path_buf());
                self.stats.record_swap(Some(generation));
                let served = self.device.current();
                info!(
                    "admin: loaded {} as generation {generation}",
                    path.display()
                );
                json!({"ok": true, "generation": generation, "model": model_json(&served)})
            }
            Err(e) => {
                self.stats.record_swap(None);
                warn!("admin: refused model: {e}");
                error(e)
            }
        }
    }

    /// Serves one client until it disconnects, idles out or misbehaves.
    fn serve_client(&self, stream: UnixStream) -> io::Result<()> {
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
        let mut writer = stream.try_clone()?;
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            // Read at most MAX_LINE + 1 bytes so an endless line cannot
            // exhaust memory.
            let n = (&mut reader)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut line)?;
            if n == 0 {
                return Ok(());
            }
            if line.last() != Some(&b'\n') && n > MAX_LINE {
                let reply = error(format!("request longer than {MAX_LINE} bytes"));
                writeln!(writer, "{reply}")?;
                return Ok(());
            }
            let reply = match std::str::from_utf8(&line) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => self.handle_line(text.trim()),
                Err(_) => error("request is not UTF-8"),
            };
            writeln!(writer, "{reply}")?;
        }
    }
}

/// Serves an already listening admin socket on a background thread.
pub fn spawn_on(admin: Arc<Admin>, listener: UnixListener) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("admin".into())
        .spawn(move || accept_loop(admin, listener))
}

/// Binds the admin socket with mode `mode` (replacing a stale socket file)
/// and serves it on a background thread.
pub fn spawn(admin: Arc<Admin>, path: &Path, mode: u32) -> io::Result<thread::JoinHandle<()>> {
    spawn_on(admin, bind(path, mode)?)
}

/// Binds the admin socket with mode `mode`, replacing a stale socket file.
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    info!("admin socket on {} (mode {mode:o})", path.display());
    Ok(listener)
}

fn accept_loop(admin: Arc<Admin>, listener: UnixListener) {
    for conn in listener.incoming() {
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!("admin: accept: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if admin.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            admin.clients.fetch_sub(1, Ordering::AcqRel);
            let _ = writeln!(stream, "{}", error("too many admin clients"));
            continue;
        }
        let admin = admin.clone();
        let spawned = thread::Builder::new()
            .name("admin-client".into())
            .spawn(move || {
                if let Err(e) = admin.serve_client(stream) {
                    warn!("admin client: {e}");
                }
                admin.clients.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            warn!("admin: cannot start a client thread: {e}");
        }
    }
}

/// Sends one request line to an admin socket and returns the reply.
pub fn request(path: &Path, line: &str) -> io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    writeln!(stream, "{line}")?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nn_core::fixed::ONE;
    use nn_core::{Activation, Layer, Mlp};

    fn model(in_dim: usize) -> Model {
        let l = Layer::new(
            in_dim,
            2,
            vec![ONE; 2 * in_dim],
            vec![0; 2],
            Activation::Identity,
        )
        .unwrap();
        Model::new(Mlp::new(vec![l]).unwrap(), "m")
    }

    fn admin() -> (Arc<Admin>, tempfile::TempDir) {
        let dev = Arc::new(NnDevice::new(model(3), "m".into(), 1).unwrap());
        let stats = Arc::new(Stats::new(1));
        (
            Arc::new(Admin::new(dev, stats, Kernel::Auto)),
            tempfile::tempdir().unwrap(),
        )
    }

    #[test]
    fn commands_and_errors() {
        let (a, dir) = admin();
        let st = a.handle_line(r#"{"cmd":"status"}"#);
        assert_eq!(st["ok"], true);
        assert_eq!(st["generation"], 1);
        assert_eq!(st["model"]["dims"], json!([3, 2]));
        // Health: no frontend yet, then one (what the serve loop records).
        let h = a.handle_line(r#"{"cmd":"health"}"#);
        assert_eq!(
            (h["ok"].clone(), h["healthy"].clone()),
            (json!(true), json!(false))
        );
        assert_eq!(h["status"], "ready");
        assert_eq!(h["checks"][1]["check"], "frontend");
        assert_eq!(h["checks"][1]["state"], "disconnected");
        assert_eq!(h["checks"][2]["state"], "stopped");
        a.device.health().frontend_connected(); // what a session's SET_FEATURES does
        let h = a.handle_line(r#"{"cmd":"health"}"#);
        assert_eq!(h["healthy"], true, "{h}");
        assert_eq!(h["checks"][2]["state"], "idle", "{h}");
        assert_eq!(a.handle_line(r#"{"cmd":"stats"}"#)["queues"][0]["ok"], 0);
        assert!(a.handle_line(r#"{"cmd":"metrics"}"#)["text"]
            .as_str()
            .unwrap()
            .contains("virtio_nn_model_generation 1"));
        for bad in [
            "",
            "status",
            "{}",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"status","x":1}"#,
            r#"{"cmd":"load"}"#,
            r#"{"cmd":"load","path":7}"#,
        ] {
            let r = a.handle_line(bad);
            assert_eq!(r["ok"], false, "{bad} -> {r}");
            assert!(
                r["error"].as_str().unwrap().starts_with("bad request"),
                "{r}"
            );
        }

        // Load: a good model with other dims swaps in; bad files are refused
        // and the old model keeps serving.
        let good = dir.path().join("good.safetensors");
        std::fs::write(&good, model(5).to_bytes()).unwrap();
        let bad = dir.path().join("bad.safetensors");
        std::fs::write(&bad, b"not a model").unwrap();
        let r = a.handle(Request::Load { path: good.clone() });
        assert_eq!(
            (r["ok"].clone(), r["generation"].clone()),
            (json!(true), json!(2))
        );
        for path in [
            bad,
            dir.path().join("missing"),
            "/dev/zero".into(),
            dir.path().to_path_buf(),
        ] {
            let r = a.handle(Request::Load { path });
            assert_eq!(r["ok"], false);
            assert!(!r["error"].as_str().unwrap().is_empty());
        }
        let st = a.handle_line(r#"{"cmd":"status"}"#);
        assert_eq!(
            (st["generation"].clone(), st["model"]["dims"].clone()),
            (json!(2), json!([5, 2]))
        );
        let s = a.handle_line(r#"{"cmd":"stats"}"#);
        assert_eq!(
            (s["swaps"].clone(), s["swap_failures"].clone()),
            (json!(1), json!(4))
        );
    }

    #[test]
    fn test_delay_only_in_test_mode() {
        let (a, _dir) = admin();
        let r = a.handle_line(r#"{"cmd":"test-delay","ms":5}"#);
        assert_eq!(r["ok"], false);
        assert!(r["error"].as_str().unwrap().contains("--test-mode"), "{r}");
        let a = Admin::new(a.device.clone(), a.stats.clone(), Kernel::Auto).with_test_mode(true);
        assert_eq!(
            a.handle_line(r#"{"cmd":"test-delay","ms":5}"#)["delay_ms"],
            5
        );
        assert_eq!(a.device.delay_ms(), 5);
        assert_eq!(
            a.handle_line(r#"{"cmd":"test-delay","ms":-1}"#)["ok"],
            false
        );
    }

    #[test]
    fn socket_serves_many_clients_and_survives_abuse() {
        let (a, dir) = admin();
        let path = dir.path().join("admin.sock");
        spawn(a, &path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        // An oversized line gets an error and the connection is closed.
        let mut s = UnixStream::connect(&path).unwrap();
        let _ = s.write_all(&vec![b'x'; MAX_LINE + 10]);
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).unwrap();
        assert!(reply.contains("longer than"), "{reply}");

        // Invalid UTF-8 and garbage get error replies on a live connection.
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(b"\xff\xfe\n{\"cmd\":\"health\"}\n").unwrap();
        let mut r = BufReader::new(s);
        let mut l1 = String::new();
        let mut l2 = String::new();
        r.read_line(&mut l1).unwrap();
        r.read_line(&mut l2).unwrap();
        assert!(l1.contains("not UTF-8"), "{l1}");
        assert!(l2.contains("\"healthy\":false"), "{l2}");

        // Many concurrent clients.
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let p = path.clone();
                thread::spawn(move || request(&p, r#"{"cmd":"status"}"#).unwrap())
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap()["ok"], true);
        }
    }
}
