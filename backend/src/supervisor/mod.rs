// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The supervisor: owns every long-lived descriptor (the vhost-user socket,
//! QEMU's connection, the admin socket, the served model) and runs the
//! daemon's work in a worker child that can die or be replaced without QEMU
//! seeing its connection close. See `backend/SUPERVISOR.md`.
//!
//! One thread, one `poll` loop. Each vhost-user message from QEMU is
//! recorded in the [`Journal`] and relayed to the worker; a reply, when the
//! request has one, is relayed back before the next message is read. The
//! data path (guest memory, kick and call eventfds) goes to the worker
//! directly. When the worker dies, a new one is started, the journal is
//! replayed into it (started vrings resume at their used index), its queues
//! are kicked and the guest signalled, and the request QEMU was waiting on,
//! if any, is sent again. QEMU's messages wait in the socket meanwhile.
//!
//! The supervisor reads no guest data but one used index per vring at a
//! restart.

mod journal;
mod wire;

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use log::{error, info, warn};
use nn_core::protocol::{cfg, CONFIG_SIZE, DEVICE_STATUS_ERROR};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::control::{self, Info, ToSupervisor, ToWorker};
pub use journal::Journal;
use wire::{code, Msg, WireError, FLAG_REPLY, VERSION_1};

/// How long a new worker may take to load its model and say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a worker may take to answer a replayed request.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an old worker gets to stop after SIGTERM (upgrade, shutdown).
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// A worker that dies sooner than this after its start is crash-looping:
/// the next start waits, twice as long each time up to [`MAX_BACKOFF`].
const STABLE_AFTER: Duration = Duration::from_secs(1);
/// Longest wait of a crash loop (unless the first wait is longer).
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Descriptor numbers of what a worker inherits.
const CHILD_LISTEN_FD: i32 = 3;
const CHILD_CONTROL_FD: i32 = 4;
const CHILD_MODEL_FD: i32 = 5;
const CHILD_ADMIN_FD: i32 = 6;

/// What the supervisor serves.
pub struct Config {
    /// The vhost-user socket QEMU connects to (listening).
    pub listener: UnixListener,
    /// Files removed at exit (the sockets the daemon created).
    pub owned_paths: Vec<PathBuf>,
    /// The admin socket (listening), handed to every worker.
    pub admin: Option<UnixListener>,
    /// The model file served at start, if any.
    pub model_path: Option<PathBuf>,
    /// The model's bytes, at most this many.
    pub max_model_bytes: usize,
    /// Arguments every worker gets (queues, kernel, sandbox, ...).
    pub worker_args: Vec<OsString>,
    /// The worker executable (this binary's path at start: an upgrade of the
    /// file there is what `upgrade` starts).
    pub exe: PathBuf,
    /// First wait of a crash loop (zero: restart at once, always).
    pub min_backoff: Duration,
}

/// A running worker.
struct Worker {
    child: Child,
    pidfd: OwnedFd,
    control: OwnedFd,
    /// Its vhost-user socket (a listening socket in the private directory).
    socket: PathBuf,
    /// The supervisor's connection to it, standing in for QEMU's.
    conn: Option<UnixStream>,
    started: Instant,
}

/// A message from QEMU not yet relayed, or relayed and awaiting its reply.
struct Pending {
    msg: Msg,
    relayed: bool,
    recorded: bool,
}

struct Supervisor {
    cfg: Config,
    /// Private directory of the workers' sockets.
    dir: PathBuf,
    /// The served model (a sealed memfd), its generation and source.
    model: Option<OwnedFd>,
    generation: u32,
    source: Option<PathBuf>,
    qemu: Option<UnixStream>,
    worker: Option<Worker>,
    journal: Journal,
    pending: Option<Pending>,
    /// Config space as last read through a worker.
    config: [u8; CONFIG_SIZE],
    info: Info,
    backoff: Duration,
    next_start: Instant,
    /// An upgrade to do (with this binary, or the configured one), and
    /// whether the worker waits for the outcome (an admin request).
    upgrade: Option<(Option<PathBuf>, bool)>,
    spawned: u64,
    term: UnixStream,
    hup: UnixStream,
}

/// Why the supervisor must end.
#[derive(Debug)]
struct Shutdown;

/// Runs the supervisor until SIGTERM/SIGINT; fails if the first worker
/// cannot start.
pub fn run(cfg: Config) -> Result<(), String> {
    let model = match &cfg.model_path {
        Some(path) => {
            let bytes = read_model(path, cfg.max_model_bytes)?;
            Some(
                control::sealed_memfd("vhost-user-nn-model", &bytes)
                    .map_err(|e| format!("cannot keep the model in memory: {e}"))?,
            )
        }
        None => None,
    };
    let dir = std::env::temp_dir().join(format!("vhost-user-nn.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let (term, term_w) = UnixStream::pair().map_err(|e| e.to_string())?;
    let (hup, hup_w) = UnixStream::pair().map_err(|e| e.to_string())?;
    for (sig, w) in [
        (signal_hook::consts::SIGTERM, &term_w),
        (signal_hook::consts::SIGINT, &term_w),
        (signal_hook::consts::SIGHUP, &hup_w),
    ] {
        let w = w.try_clone().map_err(|e| e.to_string())?;
        signal_hook::low_level::pipe::register(sig, w)
            .map_err(|e| format!("cannot handle signal {sig}: {e}"))?;
    }
    term.set_nonblocking(true).map_err(|e| e.to_string())?;
    hup.set_nonblocking(true).map_err(|e| e.to_string())?;
    let source = cfg.model_path.clone();
    let mut s = Supervisor {
        cfg,
        dir,
        model,
        generation: 1,
        source,
        qemu: None,
        worker: None,
        journal: Journal::default(),
        pending: None,
        config: [0; CONFIG_SIZE],
        info: Info {
            pid: std::process::id(),
            ..Info::default()
        },
        backoff: Duration::ZERO,
        next_start: Instant::now(),
        upgrade: None,
        spawned: 0,
        term,
        hup,
    };
    let exe = s.cfg.exe.clone();
    let first = s
        .spawn(&exe)
        .map_err(|e| format!("the first worker did not start: {e}"));
    let result = first.and_then(|w| {
        info!(
            "supervisor {}: worker {} ready",
            std::process::id(),
            w.child.id()
        );
        s.worker = Some(w);
        s.serve()
    });
    s.stop_worker();
    for p in &s.cfg.owned_paths {
        let _ = std::fs::remove_file(p);
    }
    let _ = std::fs::remove_dir_all(&s.dir);
    result
}

/// The model file's bytes (validated by the worker that loads them).
fn read_model(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() > max {
        return Err(format!("{}: larger than {max} bytes", path.display()));
    }
    Ok(bytes)
}

/// Writes 1 to an eventfd (a kick for the worker, an interrupt for QEMU).
fn ring(fd: BorrowedFd<'_>) {
    if let Err(e) = rustix::io::write(fd, &1u64.to_ne_bytes()) {
        warn!("cannot signal an eventfd: {e}");
    }
}

/// Waits until `fd` is readable or `timeout` passes.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ts = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: 1,
        tv_nsec: 0,
    });
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&ts)), Ok(n) if n > 0)
}

/// Events of one loop turn.
#[derive(Default)]
struct Ready {
    term: bool,
    hup: bool,
    accept: bool,
    qemu: bool,
    conn: bool,
    control: bool,
    exited: bool,
}

impl Supervisor {
    fn serve(&mut self) -> Result<(), String> {
        loop {
            match self.turn() {
                Ok(()) => {}
                Err(Shutdown) => return Ok(()),
            }
        }
    }

    /// One turn of the loop: start a due worker or upgrade, wait, react.
    fn turn(&mut self) -> Result<(), Shutdown> {
        if self.worker.is_none() && Instant::now() >= self.next_start {
            self.restart();
        }
        if self.upgrade.is_some()
            && self.worker.is_some()
            && !self.pending.as_ref().is_some_and(|p| p.relayed)
        {
            if let Some((binary, answer)) = self.upgrade.take() {
                self.do_upgrade(binary, answer);
            }
        }
        let r = self.wait();
        if r.term {
            info!("supervisor: signal received, shutting down");
            return Err(Shutdown);
        }
        if r.hup {
            info!("supervisor: SIGHUP, upgrading the worker");
            self.upgrade = Some((None, false));
        }
        if r.exited {
            self.worker_failed("exited");
            return Ok(());
        }
        if r.control {
            self.on_control();
        }
        if r.conn {
            self.on_worker_message();
        }
        if r.qemu {
            self.on_qemu_message();
        }
        if r.accept {
            self.accept();
        }
        Ok(())
    }

    /// Polls every descriptor that can need attention now.
    fn wait(&self) -> Ready {
        let mut r = Ready::default();
        let w = self.worker.as_ref();
        let want_qemu = self.qemu.is_some() && self.pending.is_none();
        let mut fds = vec![
            PollFd::new(&self.term, PollFlags::IN),
            PollFd::new(&self.hup, PollFlags::IN),
        ];
        let mut watched: Vec<(BorrowedFd<'_>, u8)> = Vec::new();
        if self.qemu.is_none() {
            watched.push((self.cfg.listener.as_fd(), 0));
        }
        if let (true, Some(q)) = (want_qemu, &self.qemu) {
            watched.push((q.as_fd(), 1));
        }
        if let Some(w) = w {
            if let Some(c) = &w.conn {
                watched.push((c.as_fd(), 2));
            }
            watched.push((w.control.as_fd(), 3));
            watched.push((w.pidfd.as_fd(), 4));
        }
        let slots: Vec<u8> = watched.iter().map(|&(_, s)| s).collect();
        fds.extend(
            watched
                .into_iter()
                .map(|(fd, _)| PollFd::from_borrowed_fd(fd, PollFlags::IN)),
        );
        let timeout = if self.worker.is_none() {
            Some(self.next_start.saturating_duration_since(Instant::now()))
        } else if self.upgrade.is_some() {
            Some(Duration::from_millis(10))
        } else {
            None
        };
        let ts = timeout.and_then(|t| Timespec::try_from(t).ok());
        if let Err(e) = poll(&mut fds, ts.as_ref()) {
            if e != rustix::io::Errno::INTR {
                warn!("supervisor: poll: {e}");
            }
            return r;
        }
        let hit = |f: &PollFd<'_>| !f.revents().is_empty();
        r.term = hit(&fds[0]);
        r.hup = hit(&fds[1]);
        for (f, slot) in fds[2..].iter().zip(&slots) {
            if hit(f) {
                match slot {
                    0 => r.accept = true,
                    1 => r.qemu = true,
                    2 => r.conn = true,
                    3 => r.control = true,
                    _ => r.exited = true,
                }
            }
        }
        if r.term || r.hup {
            let mut buf = [0u8; 64];
            let _ = rustix::io::read(&self.term, &mut buf);
            let _ = rustix::io::read(&self.hup, &mut buf);
        }
        r
    }

    /// A new frontend: the journal starts empty, and the worker gets a new
    /// connection (its old session ends like a disconnect).
    fn accept(&mut self) {
        match self.cfg.listener.accept() {
            Ok((stream, _)) => {
                info!("supervisor: frontend connected");
                self.qemu = Some(stream);
                self.journal = Journal::default();
                self.pending = None;
                if let Err(e) = self.reconnect_worker() {
                    self.worker_failed(&format!("cannot connect: {e}"));
                }
            }
            Err(e) => {
                warn!("supervisor: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn reconnect_worker(&mut self) -> io::Result<()> {
        if let Some(w) = &mut self.worker {
            w.conn = None;
            w.conn = Some(UnixStream::connect(&w.socket)?);
        }
        Ok(())
    }

    fn qemu_gone(&mut self, why: &str) {
        info!("supervisor: frontend disconnected ({why})");
        self.qemu = None;
        self.pending = None;
        self.journal = Journal::default();
        if let Err(e) = self.reconnect_worker() {
            self.worker_failed(&format!("cannot connect: {e}"));
        }
    }

    fn on_qemu_message(&mut self) {
        let Some(q) = &self.qemu else { return };
        let msg = match Msg::recv(q) {
            Ok(m) => m,
            Err(WireError::Closed) => return self.qemu_gone("closed"),
            Err(e) => return self.qemu_gone(&e.to_string()),
        };
        self.pending = Some(Pending {
            msg,
            relayed: false,
            recorded: false,
        });
        self.relay_pending();
    }

    /// Relays the pending message if a worker can take it; while none runs,
    /// answers a config read from the last config, marked ERROR.
    fn relay_pending(&mut self) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        if p.relayed {
            self.pending = Some(p);
            return;
        }
        let conn = self.worker.as_ref().and_then(|w| w.conn.as_ref());
        let Some(conn) = conn else {
            if p.msg.code == code::GET_CONFIG {
                let reply = self.offline_config(&p.msg);
                self.send_qemu(&reply);
            } else {
                self.pending = Some(p);
            }
            return;
        };
        if !p.recorded {
            if let Err(e) = self.journal.record(&p.msg) {
                error!("supervisor: cannot journal message {}: {e}", p.msg.code);
            }
            p.recorded = true;
        }
        let sent = p.msg.send(conn);
        let code = p.msg.code;
        if self.journal.expects_reply(&p.msg) || sent.is_err() {
            p.relayed = sent.is_ok();
            self.pending = Some(p);
        }
        if let Err(e) = sent {
            self.worker_failed(&format!("relaying message {code}: {e}"));
        }
    }

    fn send_qemu(&mut self, msg: &Msg) {
        if let Some(q) = &self.qemu {
            if let Err(e) = msg.send(q) {
                self.qemu_gone(&e.to_string());
            }
        }
    }

    fn on_worker_message(&mut self) {
        let Some(conn) = self.worker.as_ref().and_then(|w| w.conn.as_ref()) else {
            return;
        };
        let reply = match Msg::recv(conn) {
            Ok(m) => m,
            Err(e) => return self.worker_failed(&format!("connection: {e}")),
        };
        match self.pending.take() {
            Some(p) if p.relayed && reply.is_reply() && reply.code == p.msg.code => {
                if reply.code == code::GET_CONFIG {
                    self.cache_config(&reply);
                }
                self.journal.record_reply(&p.msg);
            }
            other => {
                warn!(
                    "supervisor: unexpected message {} from the worker",
                    reply.code
                );
                self.pending = other;
            }
        }
        self.send_qemu(&reply);
    }

    /// Keeps the bytes of a GET_CONFIG reply (offset, size, flags, data).
    fn cache_config(&mut self, reply: &Msg) {
        let (Some(off), Some(size)) = (reply.u32_at(0), reply.u32_at(1)) else {
            return;
        };
        let (off, size) = (off as usize, size as usize);
        if let (Some(data), Some(dst)) = (
            reply.payload.get(12..12 + size),
            self.config.get_mut(off..off + size),
        ) {
            dst.copy_from_slice(data);
        }
    }

    /// The reply to a config read while no worker runs: the last config with
    /// the device status ERROR.
    fn offline_config(&self, req: &Msg) -> Msg {
        let mut config = self.config;
        config[cfg::STATUS..cfg::STATUS + 4].copy_from_slice(&DEVICE_STATUS_ERROR.to_le_bytes());
        let (off, size, flags) = (
            req.u32_at(0).unwrap_or(0) as usize,
            req.u32_at(1).unwrap_or(0) as usize,
            req.u32_at(2).unwrap_or(0),
        );
        let data = config.get(off..off.saturating_add(size)).unwrap_or(&[]);
        let mut payload = Vec::with_capacity(12 + data.len());
        payload.extend_from_slice(&(off as u32).to_le_bytes());
        payload.extend_from_slice(&(data.len() as u32).to_le_bytes());
        payload.extend_from_slice(&flags.to_le_bytes());
        payload.extend_from_slice(data);
        Msg {
            code: code::GET_CONFIG,
            flags: VERSION_1 | FLAG_REPLY,
            payload,
            fds: Vec::new(),
        }
    }

    fn on_control(&mut self) {
        let Some(w) = &self.worker else { return };
        let got = control::recv::<ToSupervisor>(w.control.as_fd());
        let (msg, fds) = match got {
            Ok(Some(m)) => m,
            // The worker closed its end: it is exiting; its pidfd says when.
            Ok(None) => return,
            Err(e) => {
                warn!("supervisor: bad control message: {e}");
                let _ = control::send(
                    w.control.as_fd(),
                    &ToWorker::Error {
                        error: e.to_string(),
                    },
                    &[],
                );
                return;
            }
        };
        let reply = match msg {
            ToSupervisor::Model { generation, source } => match fds.into_iter().next() {
                Some(fd) if control::is_sealed_memfd(&fd) => {
                    info!(
                        "supervisor: keeping generation {generation} ({})",
                        source.display()
                    );
                    self.model = Some(fd);
                    self.generation = generation;
                    self.source = Some(source);
                    ToWorker::Ack
                }
                _ => ToWorker::Error {
                    error: "a model must come as a sealed memfd".into(),
                },
            },
            // Answered by do_upgrade, and only if the upgrade fails.
            ToSupervisor::Upgrade { binary } => {
                self.upgrade = Some((binary, true));
                return;
            }
            // Only expected while starting; never answered.
            ToSupervisor::Ready { .. } => return,
        };
        if let Some(w) = &self.worker {
            if let Err(e) = control::send(w.control.as_fd(), &reply, &[]) {
                warn!("supervisor: cannot answer the worker: {e}");
            }
        }
    }

    /// Starts a worker running `binary` and waits until it is ready and
    /// connected (not yet replayed).
    fn spawn(&mut self, binary: &Path) -> Result<Worker, String> {
        self.spawned += 1;
        let socket = self.dir.join(format!("worker-{}.sock", self.spawned));
        let _ = std::fs::remove_file(&socket);
        let listener =
            UnixListener::bind(&socket).map_err(|e| format!("{}: {e}", socket.display()))?;
        let (mine, theirs) = control::pair().map_err(|e| format!("control channel: {e}"))?;
        let dup = |fd: BorrowedFd<'_>| fd.try_clone_to_owned().map_err(|e| e.to_string());
        let mut mappings = vec![
            FdMapping {
                parent_fd: OwnedFd::from(listener),
                child_fd: CHILD_LISTEN_FD,
            },
            FdMapping {
                parent_fd: theirs,
                child_fd: CHILD_CONTROL_FD,
            },
        ];
        let mut cmd = Command::new(binary);
        cmd.args(&self.cfg.worker_args)
            .args(["--fd", &CHILD_LISTEN_FD.to_string()])
            .args(["--control-fd", &CHILD_CONTROL_FD.to_string()]);
        if let (Some(model), Some(source)) = (&self.model, &self.source) {
            mappings.push(FdMapping {
                parent_fd: dup(model.as_fd())?,
                child_fd: CHILD_MODEL_FD,
            });
            cmd.arg("--model")
                .arg(source)
                .args(["--model-fd", &CHILD_MODEL_FD.to_string()])
                .args(["--generation", &self.generation.to_string()]);
        }
        if let Some(a) = &self.cfg.admin {
            mappings.push(FdMapping {
                parent_fd: dup(a.as_fd())?,
                child_fd: CHILD_ADMIN_FD,
            });
            cmd.args(["--admin-fd", &CHILD_ADMIN_FD.to_string()]);
        }
        if self.spawned > 1 {
            // The generation may have changed without an event reaching the
            // driver before the old worker died: announce it once.
            cmd.arg("--announce");
        }
        let info = serde_json::to_string(&self.info).unwrap_or_default();
        cmd.env(control::ENV_INFO, info);
        cmd.fd_mappings(mappings)
            .map_err(|_| "descriptor numbers collide".to_string())?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let kill = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            why
        };
        let pidfd = match pidfd_open(Pid::from_child(&child), PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(e) => return Err(kill(&mut child, format!("pidfd_open: {e}"))),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(kill(&mut child, "not ready in time".into()));
            }
            let mut fds = [
                PollFd::new(&mine, PollFlags::IN),
                PollFd::new(&pidfd, PollFlags::IN),
            ];
            let ts = Timespec::try_from(left).ok();
            if poll(&mut fds, ts.as_ref()).is_err() {
                continue;
            }
            if !fds[0].revents().is_empty() {
                match control::recv::<ToSupervisor>(mine.as_fd()) {
                    Ok(Some((ToSupervisor::Ready { .. }, _))) => break,
                    Ok(Some(_)) => {
                        // A worker says Ready first; anything else would wait
                        // for an answer that never comes.
                        let e = ToWorker::Error {
                            error: "the worker is not ready yet".into(),
                        };
                        let _ = control::send(mine.as_fd(), &e, &[]);
                        continue;
                    }
                    Ok(None) | Err(_) => {}
                }
            }
            if !fds[1].revents().is_empty() || !fds[0].revents().is_empty() {
                let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
                return Err(format!("worker exited before it was ready ({status})"));
            }
        }
        let conn = match UnixStream::connect(&socket) {
            Ok(c) => c,
            Err(e) => return Err(kill(&mut child, format!("cannot connect: {e}"))),
        };
        Ok(Worker {
            child,
            pidfd,
            control: mine,
            socket,
            conn: Some(conn),
            started: Instant::now(),
        })
    }

    /// Brings the worker to the journaled state: replays the journal, waits
    /// until it has taken all of it, kicks the started queues (so it serves
    /// what the old worker left unanswered) and signals the guest (for
    /// answers the old worker wrote but did not signal).
    fn replay(&mut self) -> Result<(), String> {
        let Some(conn) = self.worker.as_ref().and_then(|w| w.conn.as_ref()) else {
            return Err("no worker connection".into());
        };
        if self.qemu.is_none() || self.journal.is_empty() {
            return Ok(());
        }
        let started = self.journal.started();
        let msgs = self.journal.replay(&started).map_err(|e| e.to_string())?;
        conn.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let barrier = Msg::request(code::GET_FEATURES, Vec::new());
        for m in msgs.iter().chain([&barrier]) {
            m.send(conn)
                .map_err(|e| format!("replaying {}: {e}", m.code))?;
            if self.journal.expects_reply(m) {
                let r = Msg::recv(conn).map_err(|e| format!("reply to {}: {e}", m.code))?;
                if !r.is_reply() || r.code != m.code {
                    return Err(format!("reply {} to request {}", r.code, m.code));
                }
            }
        }
        conn.set_read_timeout(None).map_err(|e| e.to_string())?;
        for s in &started {
            info!(
                "supervisor: vring {} resumes at {}",
                s.index,
                s.resume_at
                    .map_or("its journaled base".into(), |i| i.to_string())
            );
            if let Some(k) = s.kick {
                ring(k);
            }
        }
        for s in &started {
            if let Some(c) = s.call {
                ring(c);
            }
        }
        Ok(())
    }

    /// Starts a worker after the last one ended, replays, and relays what
    /// QEMU was waiting on.
    fn restart(&mut self) {
        let exe = self.cfg.exe.clone();
        let t0 = Instant::now();
        match self.spawn(&exe) {
            Ok(w) => {
                let pid = w.child.id();
                self.worker = Some(w);
                match self.replay() {
                    Ok(()) => {
                        info!(
                            "supervisor: worker {pid} took over in {} us (restart {})",
                            t0.elapsed().as_micros(),
                            self.info.restarts
                        );
                        self.relay_pending();
                    }
                    Err(e) => self.worker_failed(&format!("replay: {e}")),
                }
            }
            Err(e) => {
                error!("supervisor: {e}");
                self.info.restarts += 1;
                self.info.last_exit = Some(e);
                self.schedule(Duration::ZERO);
            }
        }
    }

    /// Schedules the next start: at once after a worker that ran
    /// [`STABLE_AFTER`], else after a doubling backoff from `min_backoff`.
    fn schedule(&mut self, lived: Duration) {
        let min = self.cfg.min_backoff;
        self.backoff = if lived >= STABLE_AFTER || min.is_zero() {
            Duration::ZERO
        } else {
            (self.backoff * 2).clamp(min, MAX_BACKOFF.max(min))
        };
        if !self.backoff.is_zero() {
            warn!(
                "supervisor: worker crash loop, next start in {} ms",
                self.backoff.as_millis()
            );
        }
        self.next_start = Instant::now() + self.backoff;
    }

    /// The worker died or broke its connection: reap it and schedule the
    /// next one. A message QEMU waits on is relayed again to the next worker.
    fn worker_failed(&mut self, why: &str) {
        let Some(mut w) = self.worker.take() else {
            return;
        };
        let _ = pidfd_send_signal(&w.pidfd, Signal::KILL);
        let status = w
            .child
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        let lived = w.started.elapsed();
        error!(
            "supervisor: worker {} ended ({why}; {status}) after {} ms",
            w.child.id(),
            lived.as_millis()
        );
        let _ = std::fs::remove_file(&w.socket);
        self.info.restarts += 1;
        self.info.last_exit = Some(format!("{why}; {status}"));
        if let Some(p) = &mut self.pending {
            p.relayed = false;
        }
        self.schedule(lived);
    }

    /// Replaces a working worker: the new one must be ready before the old
    /// one is stopped, so a broken binary leaves the old one serving.
    fn do_upgrade(&mut self, binary: Option<PathBuf>, answer: bool) {
        let binary = binary.unwrap_or_else(|| self.cfg.exe.clone());
        info!("supervisor: upgrading the worker to {}", binary.display());
        let t0 = Instant::now();
        self.info.upgrades += 1;
        let mut new = match self.spawn(&binary) {
            Ok(w) => w,
            Err(e) => {
                error!("supervisor: upgrade refused, the old worker keeps serving: {e}");
                self.info.upgrades -= 1;
                if let (true, Some(w)) = (answer, &self.worker) {
                    let refusal = ToWorker::Error { error: e.clone() };
                    let _ = control::send(w.control.as_fd(), &refusal, &[]);
                }
                self.info.last_upgrade_error = Some(e);
                return;
            }
        };
        self.info.last_upgrade_error = None;
        self.stop_worker();
        // The new worker's connection was made before the old one stopped;
        // it carries no state yet.
        new.started = Instant::now();
        let pid = new.child.id();
        self.worker = Some(new);
        match self.replay() {
            Ok(()) => {
                info!(
                    "supervisor: worker {pid} took over after an upgrade in {} us",
                    t0.elapsed().as_micros()
                );
                self.relay_pending();
            }
            Err(e) => self.worker_failed(&format!("replay after upgrade: {e}")),
        }
    }

    /// Stops the worker: SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    fn stop_worker(&mut self) {
        let Some(mut w) = self.worker.take() else {
            return;
        };
        let _ = pidfd_send_signal(&w.pidfd, Signal::TERM);
        if !readable(w.pidfd.as_fd(), STOP_TIMEOUT) {
            let _ = pidfd_send_signal(&w.pidfd, Signal::KILL);
        }
        let _ = w.child.wait();
        let _ = std::fs::remove_file(&w.socket);
    }
}
