// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The admin socket: a Unix socket speaking line-delimited JSON.
//!
//! Each request is one line holding one JSON object with a `cmd` field:
//!
//! | request | reply (besides `"ok": true`) |
//! |---|---|
//! | `{"cmd":"status"}` | `generation`, `model` (name, dims, checksum, path), `queues`, `uptime_s`, `pid`, `supervisor`, `admin` (`clients` served now, `refused` peers, `timed_out` clients) |
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
//! serving), a `load` while another is in progress (`busy: a load is in
//! progress`: loads, from here or from `--watch`, run one at a time, each
//! from reading the file to the swap). Clients are served concurrently, one
//! thread each, up to [`MAX_CLIENTS`].
//!
//! # Access
//! * The socket appears at its path with its final mode: it is bound in a
//!   private (0700) directory next to it, given its mode, and hard-linked
//!   into place ([`bind`]). Nothing at the path is followed or replaced but
//!   a stale socket.
//! * Only root, the daemon's own uid and the uids and gids of
//!   `--admin-allow-uid` / `--admin-allow-gid` may use it (`SO_PEERCRED`,
//!   checked before the client takes a slot); anyone else gets
//!   `permission denied (uid N)` and is closed, counted and logged
//!   (rate-limited, see [`crate::ratelimit`]).
//! * Each request has a deadline (`--admin-timeout-ms`, [`DEFAULT_TIMEOUT`]):
//!   its line must arrive, and its answer be taken, within it (the time the
//!   daemon spends answering does not count). A client that misses it is
//!   told so and closed, so a slow or idle client cannot keep a slot.

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use log::{info, warn};
use nn_core::kernels::Kernel;
use nn_core::Model;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::device::NnDevice;
use crate::ratelimit::warn_limited;
use crate::stats::Stats;

/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;
/// Most clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 32;
/// Default deadline of one request: its line must arrive, and its answer
/// be taken, within this time (`--admin-timeout-ms`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The reply to a `load` while another load is in progress.
pub const BUSY: &str = "busy: a load is in progress";

/// The admin socket's access options (flattened into the daemon's command
/// line; a supervisor hands them to its workers, which serve the socket).
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct AccessArgs {
    /// Also let this uid use the admin socket (repeatable). Root and the
    /// daemon's own uid always may; anyone else is refused (SO_PEERCRED).
    #[arg(long = "admin-allow-uid", value_name = "UID")]
    pub allow_uid: Vec<u32>,

    /// Also let clients whose (effective) gid is this use the admin socket
    /// (repeatable; SO_PEERCRED reports the primary gid only, not
    /// supplementary groups).
    #[arg(long = "admin-allow-gid", value_name = "GID")]
    pub allow_gid: Vec<u32>,

    /// Deadline of one admin request in milliseconds: its line must arrive,
    /// and its answer be read, within it (the daemon's own work does not
    /// count), or the client is closed.
    #[arg(
        long = "admin-timeout-ms",
        value_name = "MS",
        default_value_t = DEFAULT_TIMEOUT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub timeout_ms: u64,
}

impl AccessArgs {
    /// The same options as arguments (for a worker).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::new();
        for uid in &self.allow_uid {
            v.extend(["--admin-allow-uid".into(), uid.to_string().into()]);
        }
        for gid in &self.allow_gid {
            v.extend(["--admin-allow-gid".into(), gid.to_string().into()]);
        }
        v.extend([
            "--admin-timeout-ms".into(),
            self.timeout_ms.to_string().into(),
        ]);
        v
    }

    /// The access policy these options describe.
    pub fn access(&self) -> Access {
        Access::local()
            .allow_uids(self.allow_uid.iter().copied())
            .allow_gids(self.allow_gid.iter().copied())
            .with_timeout(Duration::from_millis(self.timeout_ms))
    }
}

/// Who may use the admin socket and how long a request may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    uids: Vec<u32>,
    gids: Vec<u32>,
    timeout: Duration,
}

impl Access {
    /// Root and this process's effective uid, [`DEFAULT_TIMEOUT`].
    pub fn local() -> Self {
        let me = rustix::process::geteuid().as_raw();
        Self {
            uids: if me == 0 { vec![0] } else { vec![0, me] },
            gids: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Also allows these uids.
    pub fn allow_uids(mut self, uids: impl IntoIterator<Item = u32>) -> Self {
        self.uids.extend(uids);
        self
    }

    /// Also allows these (effective, primary) gids.
    pub fn allow_gids(mut self, gids: impl IntoIterator<Item = u32>) -> Self {
        self.gids.extend(gids);
        self
    }

    /// Sets the deadline of one request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether a client of `uid` and `gid` may use the socket.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

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
    /// One load at a time, from reading the file to the swap: at most one
    /// model file in memory, the generation handed to `persist` is the one
    /// the swap takes, and a load started later swaps later.
    loading: Mutex<()>,
    device: Arc<NnDevice>,
    kernel: Kernel,
    test_mode: bool,
    stats: Arc<Stats>,
    started: Instant,
    clients: AtomicUsize,
    access: Access,
    /// Clients refused by [`Access`], and their log.
    refused: AtomicU64,
    /// Clients closed for missing their deadline, and their log.
    timed_out: AtomicU64,
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
        // The file GET_MODEL serves, as config space describes it.
        "file_size": served.file_size(),
        "file_crc32c": format!("crc32c:{:08x}", served.file_crc32c()),
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
            loading: Mutex::new(()),
            device,
            kernel,
            test_mode: false,
            stats,
            started: Instant::now(),
            clients: AtomicUsize::new(0),
            access: Access::local(),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        }
    }

    /// Who may connect and the deadline of a request (default:
    /// [`Access::local`]).
    pub fn with_access(mut self, access: Access) -> Self {
        self.access = access;
        self
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
                    "admin": {
                        "clients": self.clients.load(Ordering::Relaxed),
                        "refused": self.refused.load(Ordering::Relaxed),
                        "timed_out": self.timed_out.load(Ordering::Relaxed),
                    },
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
        self.try_load(path).unwrap_or_else(|| error(BUSY))
    }

    /// Loads `path` unless another load is in progress (`None` then).
    /// Everything from reading the file to the swap happens under the load
    /// lock: one model file in memory at a time, and loads swap in the
    /// order they started.
    pub fn try_load(&self, path: &Path) -> Option<Value> {
        let _one_at_a_time = match self.loading.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        // Validation happens here, on the admin thread, off the data path.
        let loaded = crate::sandbox::may_read(path)
            .and_then(|()| Model::load(path).map_err(|e| crate::sandbox::explain(e.to_string())))
            .and_then(|m| {
                with_kernel(m, self.kernel).map_err(|e| format!("{}: {e}", path.display()))
            });
        let loaded = loaded.and_then(|model| match &self.persist {
            Some(persist) => persist(&model, self.device.next_generation(), path)
                .map(|()| model)
                .map_err(|e| format!("cannot hand the model to the supervisor: {e}")),
            None => Ok(model),
        });
        Some(match loaded {
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
        })
    }

    /// Holds the load lock (tests: a load in progress).
    #[cfg(test)]
    pub(crate) fn hold_load_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.loading.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one client until it disconnects, misses a deadline or
    /// misbehaves.
    fn serve_client(&self, stream: UnixStream) -> io::Result<()> {
        let timeout = self.access.timeout;
        let mut conn = Conn {
            stream,
            buf: Vec::new(),
        };
        loop {
            let deadline = Instant::now() + timeout;
            let line = match conn.read_request(deadline)? {
                Got::Eof => return Ok(()),
                Got::TooLong => {
                    let reply = error(format!("request longer than {MAX_LINE} bytes"));
                    conn.send_now(&reply);
                    return Ok(());
                }
                Got::TimedOut => {
                    self.time_out(&conn, "request");
                    return Ok(());
                }
                Got::Line(line) => line,
            };
            let started = Instant::now();
            let reply = match std::str::from_utf8(&line) {
                Ok(text) => self.handle_line(text.trim()),
                Err(_) => error("request is not UTF-8"),
            };
            // The daemon's own time does not count against the client.
            let deadline = deadline + started.elapsed();
            if !conn.write_by(format!("{reply}\n").as_bytes(), deadline)? {
                self.time_out(&conn, "answer");
                return Ok(());
            }
        }
    }

    /// Closes a client that missed its deadline (the caller drops it).
    fn time_out(&self, conn: &Conn, what: &str) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
        let ms = self.access.timeout.as_millis();
        conn.send_now(&error(format!(
            "timeout: the {what} took more than {ms} ms"
        )));
        let who = peer_text(&conn.stream);
        warn_limited!("admin: closed a client ({who}): its {what} took more than {ms} ms");
    }

    /// Refuses a client `Access` does not allow.
    fn refuse(&self, stream: &UnixStream, uid: u32, gid: u32, pid: i32) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            stream: match stream.try_clone() {
                Ok(s) => s,
                Err(_) => return,
            },
            buf: Vec::new(),
        };
        conn.send_now(&error(format!("permission denied (uid {uid})")));
        warn_limited!(
            "admin: refused a client (uid {uid}, gid {gid}, pid {pid}): not root, the \
             daemon's uid or an --admin-allow-uid/--admin-allow-gid"
        );
    }
}

/// One client connection: the socket and the bytes read past the last
/// request line.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

/// What reading a request gave.
enum Got {
    Line(Vec<u8>),
    Eof,
    TooLong,
    TimedOut,
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

impl Conn {
    /// The next non-blank request line, complete by `deadline` (blank lines
    /// do not extend it). At most [`MAX_LINE`] bytes are ever buffered.
    fn read_request(&mut self, deadline: Instant) -> io::Result<Got> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                if i > MAX_LINE {
                    return Ok(Got::TooLong);
                }
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                if line.trim_ascii().is_empty() {
                    continue;
                }
                return Ok(Got::Line(line));
            }
            if self.buf.len() > MAX_LINE {
                return Ok(Got::TooLong);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Got::TimedOut);
            }
            self.stream.set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            match (&self.stream).read(&mut chunk) {
                // The last request may end without a newline.
                Ok(0) if self.buf.trim_ascii().is_empty() => return Ok(Got::Eof),
                Ok(0) => return Ok(Got::Line(std::mem::take(&mut self.buf))),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if timed_out(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes all of `bytes` by `deadline`; `false` if it could not.
    fn write_by(&self, mut bytes: &[u8], deadline: Instant) -> io::Result<bool> {
        while !bytes.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            self.stream.set_write_timeout(Some(left))?;
            match (&self.stream).write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if timed_out(&e) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Sends one reply line if the socket takes it at once (a last word
    /// before closing: never waits).
    fn send_now(&self, reply: &Value) {
        use rustix::net::SendFlags;
        let _ = rustix::net::send(
            &self.stream,
            format!("{reply}\n").as_bytes(),
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        );
    }
}

/// "uid U, pid P" of a connected client, for logs.
fn peer_text(stream: &UnixStream) -> String {
    match rustix::net::sockopt::socket_peercred(stream) {
        Ok(c) => format!(
            "uid {}, pid {}",
            c.uid.as_raw(),
            c.pid.as_raw_nonzero().get()
        ),
        Err(e) => format!("credentials unknown: {e}"),
    }
}

/// Serves an already listening admin socket on a background thread.
pub fn spawn_on(admin: Arc<Admin>, listener: UnixListener) -> io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("admin".into())
        .spawn(move || accept_loop(admin, listener))
}

/// Binds the admin socket with mode `mode` (see [`bind`]) and serves it on
/// a background thread.
pub fn spawn(admin: Arc<Admin>, path: &Path, mode: u32) -> io::Result<thread::JoinHandle<()>> {
    spawn_on(admin, bind(path, mode)?)
}

/// Binds the admin socket at `path` with permissions `mode`.
///
/// * Whatever is at `path` is examined with `lstat`, never followed: a
///   socket nobody listens on (a daemon's that was killed) is removed; a
///   socket in use, a regular file, a directory, a symlink or anything else
///   is refused with an error and left in place.
/// * No moment exists at which the socket is at `path` with another mode:
///   it is bound in a fresh private (0700) directory next to `path` (no one
///   else can reach it there), given `mode`, and then hard-linked to `path`.
///   `link(2)` never replaces anything, so a file that appeared at `path`
///   after the check makes the bind fail instead of being removed. (No
///   `umask` games: the umask is per process and other threads may be
///   creating files.) The private directory's path is a few bytes longer
///   than `path`, which must leave room for it in a socket address (107
///   bytes).
pub fn bind(path: &Path, mode: u32) -> io::Result<UnixListener> {
    remove_stale(path)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = private_dir(parent)?;
    let tmp = dir.join("s");
    let bound = UnixListener::bind(&tmp)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot bind {} (next to the path): {e}", tmp.display()),
            )
        })
        .and_then(|listener| {
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
            std::fs::hard_link(&tmp, path).map_err(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => io::Error::new(
                    e.kind(),
                    format!("{} appeared while binding; left in place", path.display()),
                ),
                _ => e,
            })?;
            Ok(listener)
        });
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&dir);
    let listener = bound?;
    info!("admin socket on {} (mode {mode:o})", path.display());
    Ok(listener)
}

/// Removes a stale socket at `path`; refuses anything else there.
fn remove_stale(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let ft = meta.file_type();
    if !ft.is_socket() {
        let what = if ft.is_symlink() {
            "a symlink"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_file() {
            "a regular file"
        } else {
            "not a socket"
        };
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is {what}; it is left in place (remove it, or choose \
                 another --admin-socket)",
                path.display()
            ),
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{} is in use (a daemon listens on it)", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            info!("admin: removing the stale socket {}", path.display());
            std::fs::remove_file(path)
        }
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{}: cannot tell whether it is in use: {e}", path.display()),
        )),
    }
}

/// A new directory in `parent` that only this user can enter.
fn private_dir(parent: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut tries = 0;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!(".nn{}.{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            // Something (of a process with the same pid?) is there: it is
            // not ours to touch; try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
            Err(e) => return Err(e),
        }
    }
}

fn accept_loop(admin: Arc<Admin>, listener: UnixListener) {
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                warn!("admin: accept: {e}");
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Before the client takes a slot: a refused one never does.
        match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) if admin.access.allows(c.uid.as_raw(), c.gid.as_raw()) => {}
            Ok(c) => {
                let pid = c.pid.as_raw_nonzero().get();
                admin.refuse(&stream, c.uid.as_raw(), c.gid.as_raw(), pid);
                continue;
            }
            Err(e) => {
                warn!("admin: cannot read a client's credentials: {e}");
                continue;
            }
        }
        if admin.clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            admin.clients.fetch_sub(1, Ordering::AcqRel);
            let conn = Conn {
                stream,
                buf: Vec::new(),
            };
            conn.send_now(&error("too many admin clients"));
            continue;
        }
        let client = admin.clone();
        let spawned = thread::Builder::new()
            .name("admin-client".into())
            .spawn(move || {
                if let Err(e) = client.serve_client(stream) {
                    warn!("admin client: {e}");
                }
                client.clients.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            admin.clients.fetch_sub(1, Ordering::AcqRel);
            warn!("admin: cannot start a client thread: {e}");
        }
    }
}

/// Sends one request line to an admin socket and returns the reply.
pub fn request(path: &Path, line: &str) -> io::Result<Value> {
    request_on(UnixStream::connect(path)?, line)
}

/// [`request`] on a connected stream.
fn request_on(mut stream: UnixStream, line: &str) -> io::Result<Value> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    // The daemon may answer and close before reading the request (a
    // refused client, too many clients): the write then fails with EPIPE,
    // but its answer is there to read.
    let sent = writeln!(stream, "{line}");
    let mut reply = String::new();
    let read = BufReader::new(stream).read_line(&mut reply);
    match (read, sent) {
        (Ok(n), _) if n > 0 => {}
        (_, Err(e)) | (Err(e), Ok(())) => return Err(e),
        (Ok(_), Ok(())) => {}
    }
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
        let file = model(3).to_bytes();
        assert_eq!(st["model"]["file_size"], json!(file.len()));
        assert_eq!(
            st["model"]["file_crc32c"],
            json!(format!("crc32c:{:08x}", nn_core::model::crc32c(&file)))
        );
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

    #[test]
    fn bind_refuses_what_is_not_a_stale_socket_and_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let file = d.join("file");
        std::fs::write(&file, b"keep me").unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let dangling = d.join("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
        let sub = d.join("dir");
        std::fs::create_dir(&sub).unwrap();
        for (path, what) in [
            (&file, "a regular file"),
            (&link, "a symlink"),
            (&dangling, "a symlink"),
            (&sub, "a directory"),
        ] {
            let e = bind(path, 0o600).unwrap_err();
            assert!(e.to_string().contains(what), "{}: {e}", path.display());
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
        assert_eq!(std::fs::read_link(&link).unwrap(), file);
        assert!(std::fs::symlink_metadata(&dangling).is_ok());
        assert!(std::fs::symlink_metadata(d.join("nowhere")).is_err());
        assert!(sub.is_dir());

        // A socket in use is refused; a stale one is replaced.
        let live = d.join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        let e = bind(&live, 0o600).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse, "{e}");
        let stale = d.join("stale.sock");
        drop(UnixListener::bind(&stale).unwrap());
        let l = bind(&stale, 0o600).unwrap();
        UnixStream::connect(&stale).unwrap();
        l.accept().unwrap();
        // Nothing else was left behind (the private directories).
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["dangling", "dir", "file", "link", "live.sock", "stale.sock"]
        );
    }

    #[test]
    fn bind_gives_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o600, 0o660, 0o666] {
            let path = dir.path().join(format!("{mode:o}.sock"));
            let _l = bind(&path, mode).unwrap();
            let m = std::fs::symlink_metadata(&path).unwrap();
            assert!(m.file_type().is_socket());
            assert_eq!(m.permissions().mode() & 0o777, mode);
        }
    }

    #[test]
    fn access_allows_root_self_and_the_lists() {
        let me = rustix::process::geteuid().as_raw();
        let a = Access::local();
        assert!(a.allows(0, 12345) && a.allows(me, 12345));
        assert!(!a.allows(65534, 65534));
        let a = a.allow_uids([1000]).allow_gids([100]);
        assert!(a.allows(1000, 1) && a.allows(4242, 100));
        assert!(!a.allows(4242, 1));
        let args = AccessArgs {
            allow_uid: vec![7, 8],
            allow_gid: vec![9],
            timeout_ms: 250,
        };
        let strs: Vec<String> = args
            .to_args()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect();
        assert_eq!(
            strs,
            [
                "--admin-allow-uid",
                "7",
                "--admin-allow-uid",
                "8",
                "--admin-allow-gid",
                "9",
                "--admin-timeout-ms",
                "250"
            ]
        );
        assert_eq!(args.access().timeout, Duration::from_millis(250));
    }

    /// A daemon may answer and close before it reads the request (a refused
    /// peer): the request's write fails (EPIPE), the answer is still read.
    #[test]
    fn request_reads_an_answer_sent_before_the_request() {
        let (client, server) = UnixStream::pair().unwrap();
        (&server)
            .write_all(b"{\"ok\":false,\"error\":\"permission denied (uid 7)\"}\n")
            .unwrap();
        drop(server);
        let r = request_on(client, r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r["error"], "permission denied (uid 7)");
        // Nothing sent and the peer gone: the write's error.
        let (client, server) = UnixStream::pair().unwrap();
        drop(server);
        let e = request_on(client, "{}").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
    }

    /// The socket never shows at its path with another mode than asked
    /// (another thread watches the path while it is bound, over and over).
    #[test]
    fn bind_shows_no_other_mode_at_any_moment() {
        use std::sync::atomic::AtomicBool;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let done = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (path, done) = (path.clone(), done.clone());
            thread::spawn(move || {
                let mut seen = std::collections::BTreeSet::new();
                while !done.load(Ordering::Relaxed) {
                    if let Ok(m) = std::fs::symlink_metadata(&path) {
                        seen.insert(m.permissions().mode() & 0o777);
                    }
                }
                seen
            })
        };
        for _ in 0..300 {
            drop(bind(&path, 0o600).unwrap());
        }
        done.store(true, Ordering::Relaxed);
        let seen = watcher.join().unwrap();
        assert!(
            seen.iter().all(|&m| m == 0o600),
            "modes seen: {:?}",
            seen.iter().map(|m| format!("{m:o}")).collect::<Vec<_>>()
        );
    }
}
