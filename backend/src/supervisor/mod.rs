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
pub mod spawner;
mod wire;

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{error, info, warn};
use nn_core::protocol::{cfg, CONFIG_SIZE, DEVICE_STATUS_ERROR};
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::process::{pidfd_send_signal, Signal};

use crate::control::{self, Info, ToSupervisor, ToWorker};
use crate::sandbox::{self, Mode};
use journal::Journal;
use spawner::{Spawn, Spawner};
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
const CHILD_HTTP_FD: i32 = 7;

/// What the supervisor serves.
pub struct Config {
    /// The vhost-user socket QEMU connects to (listening).
    pub listener: UnixListener,
    /// Files removed at exit (the sockets the daemon created).
    pub owned_paths: Vec<PathBuf>,
    /// The admin socket (listening), handed to every worker.
    pub admin: Option<UnixListener>,
    /// The `--http` endpoint (a listening TCP or Unix socket), handed to
    /// every worker, which serves it.
    pub http: Option<OwnedFd>,
    /// The model file served at start, if any.
    pub model_path: Option<PathBuf>,
    /// Arguments every worker gets (queues, kernel, sandbox, ...).
    pub worker_args: Vec<OsString>,
    /// The worker executable (this binary's path at start: an upgrade of the
    /// file there is what `upgrade` starts).
    pub exe: PathBuf,
    /// First wait of a crash loop (zero: restart at once, always).
    pub min_backoff: Duration,
    /// The supervisor's own seccomp filter (workers install theirs).
    pub seccomp: Mode,
    /// The user (and group) to run as once started (`--user`); the spawner
    /// and the workers are started as that user.
    pub user: Option<sandbox::UserSpec>,
}

/// A running worker.
struct Worker {
    pid: u32,
    pidfd: OwnedFd,
    /// The private directory of its vhost-user socket.
    dir: PathBuf,
    control: OwnedFd,
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
    spawner: Spawner,
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
            // Validated by the worker that loads them.
            let bytes = nn_core::model::read_file(path).map_err(|e| e.to_string())?;
            Some(
                control::sealed_memfd("vhost-user-nn-model", &bytes)
                    .map_err(|e| format!("cannot keep the model in memory: {e}"))?,
            )
        }
        None => None,
    };
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
    remove_stale_worker_dirs();
    // The sockets are bound and the model read: nothing left that needs
    // the privileges the daemon was started with.
    if let Some(user) = &cfg.user {
        sandbox::drop_privileges(user)?;
    }
    let spawner = Spawner::start(&cfg.exe).map_err(|e| format!("cannot start the spawner: {e}"))?;
    // From here on the supervisor needs no new files, processes or memory
    // it could execute: sealed by a filter tighter than the worker's.
    sandbox::apply_supervisor(cfg.seccomp)?;
    let mut s = Supervisor {
        cfg,
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
        spawner,
        term,
        hup,
    };
    let exe = s.cfg.exe.clone();
    let first = s
        .spawn(&exe)
        .map_err(|e| format!("the first worker did not start: {e}"));
    let result = first.and_then(|w| {
        info!("supervisor {}: worker {} ready", std::process::id(), w.pid);
        s.worker = Some(w);
        s.serve()
    });
    s.stop_worker();
    for p in &s.cfg.owned_paths {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// Name of a worker's socket in its directory.
const WORKER_SOCKET: &str = "worker.sock";

/// The private directory of the `n`th worker of supervisor `pid`.
fn worker_dir(pid: u32, n: u64) -> PathBuf {
    std::env::temp_dir().join(format!("vhost-user-nn.{pid}.{n}"))
}

fn remove_worker_dir(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(WORKER_SOCKET));
    let _ = std::fs::remove_dir(dir);
}

/// Removes the worker directories of supervisors that are gone (killed
/// before they could remove them).
fn remove_stale_worker_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("vhost-user-nn.")) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let alive = rustix::process::Pid::from_raw(pid)
            .is_some_and(|p| rustix::process::test_kill_process(p).is_ok());
        if !alive {
            remove_worker_dir(&e.path());
        }
    }
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
        while self.turn().is_ok() {}
        Ok(())
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

    fn qemu_gone(&mut self, why: &str) {
        info!("supervisor: frontend disconnected ({why})");
        self.qemu = None;
        self.pending = None;
        self.journal = Journal::default();
        if let Err(e) = self.reconnect_worker() {
            self.worker_failed(&format!("cannot connect: {e}"));
        }
    }

    /// A new connection to the worker (which serves one at a time, and
    /// takes this one once its session on the old one has ended).
    fn reconnect_worker(&mut self) -> std::io::Result<()> {
        if let Some(w) = &mut self.worker {
            w.conn = None;
            w.conn = Some(UnixStream::connect(w.dir.join(WORKER_SOCKET))?);
        }
        Ok(())
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
        // A private directory holds the worker's socket while it runs.
        let dir = worker_dir(std::process::id(), self.spawned);
        remove_worker_dir(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let listener = UnixListener::bind(dir.join(WORKER_SOCKET));
        let worker = listener
            .map_err(|e| format!("{}: {e}", dir.display()))
            .and_then(|l| self.spawn_on(binary, l, dir.clone()));
        if worker.is_err() {
            remove_worker_dir(&dir);
        }
        worker
    }

    /// [`Supervisor::spawn`] with the worker's listening socket in `dir`.
    fn spawn_on(
        &mut self,
        binary: &Path,
        listener: UnixListener,
        dir: PathBuf,
    ) -> Result<Worker, String> {
        let (mine, theirs) = control::pair().map_err(|e| format!("control channel: {e}"))?;
        let mut fds: Vec<OwnedFd> = vec![OwnedFd::from(listener), theirs];
        let mut child_fds = vec![CHILD_LISTEN_FD, CHILD_CONTROL_FD];
        let mut args = self.cfg.worker_args.clone();
        let mut arg = |a: &[&str]| args.extend(a.iter().map(OsString::from));
        arg(&["--fd", &CHILD_LISTEN_FD.to_string()]);
        arg(&["--control-fd", &CHILD_CONTROL_FD.to_string()]);
        if let (Some(model), Some(source)) = (&self.model, &self.source) {
            fds.push(model.try_clone().map_err(|e| e.to_string())?);
            child_fds.push(CHILD_MODEL_FD);
            arg(&["--model-fd", &CHILD_MODEL_FD.to_string()]);
            arg(&["--generation", &self.generation.to_string()]);
            args.push("--model".into());
            args.push(source.into());
        }
        if let Some(a) = &self.cfg.admin {
            fds.push(a.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?);
            child_fds.push(CHILD_ADMIN_FD);
            args.extend(["--admin-fd".into(), CHILD_ADMIN_FD.to_string().into()]);
        }
        if let Some(h) = &self.cfg.http {
            fds.push(h.try_clone().map_err(|e| e.to_string())?);
            child_fds.push(CHILD_HTTP_FD);
            args.extend(["--http-fd".into(), CHILD_HTTP_FD.to_string().into()]);
        }
        if self.spawned > 1 {
            // The generation may have changed without an event reaching the
            // driver before the old worker died: announce it once.
            args.push("--announce".into());
        }
        let info = serde_json::to_string(&self.info).unwrap_or_default();
        let req = Spawn {
            binary: binary.to_path_buf(),
            args,
            env: vec![(control::ENV_INFO.into(), info.into())],
            child_fds,
        };
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
        let (pid, pidfd) = self.spawner.spawn(&req, &borrowed)?;
        drop(fds);
        let mut worker = Worker {
            pid,
            pidfd,
            control: mine,
            dir,
            conn: None,
            started: Instant::now(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.reap(&mut worker);
                return Err("not ready in time".into());
            }
            let mut fds = [
                PollFd::new(&worker.control, PollFlags::IN),
                PollFd::new(&worker.pidfd, PollFlags::IN),
            ];
            let ts = Timespec::try_from(left).ok();
            if poll(&mut fds, ts.as_ref()).is_err() {
                continue;
            }
            if !fds[0].revents().is_empty() {
                match control::recv::<ToSupervisor>(worker.control.as_fd()) {
                    Ok(Some((ToSupervisor::Ready { .. }, _))) => break,
                    Ok(Some(_)) => {
                        // A worker says Ready first; anything else would wait
                        // for an answer that never comes.
                        let e = ToWorker::Error {
                            error: "the worker is not ready yet".into(),
                        };
                        let _ = control::send(worker.control.as_fd(), &e, &[]);
                        continue;
                    }
                    Ok(None) | Err(_) => {}
                }
            }
            if !fds[1].revents().is_empty() || !fds[0].revents().is_empty() {
                let status = self.reap(&mut worker);
                return Err(format!("worker exited before it was ready ({status})"));
            }
        }
        match UnixStream::connect(worker.dir.join(WORKER_SOCKET)) {
            Ok(c) => worker.conn = Some(c),
            Err(e) => {
                self.reap(&mut worker);
                return Err(format!("cannot connect: {e}"));
            }
        }
        Ok(worker)
    }

    /// Kills `w` (if it still runs), waits for its end and says how it ended.
    fn reap(&mut self, w: &mut Worker) -> String {
        let _ = pidfd_send_signal(&w.pidfd, Signal::KILL);
        if !readable(w.pidfd.as_fd(), STOP_TIMEOUT) {
            return "did not exit after SIGKILL".into();
        }
        remove_worker_dir(&w.dir);
        self.spawner.exit_status(w.pid, STOP_TIMEOUT)
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
                let pid = w.pid;
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
        let status = self.reap(&mut w);
        let lived = w.started.elapsed();
        // A worker killed by its seccomp filter (--seccomp kill) dies of SIGSYS.
        let seccomp = if status.contains("SIGSYS") {
            ", killed by SIGSYS (seccomp)"
        } else {
            ""
        };
        error!(
            "supervisor: worker {} ended ({why}; {status}{seccomp}) after {} ms",
            w.pid,
            lived.as_millis()
        );
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
        let pid = new.pid;
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
        readable(w.pidfd.as_fd(), STOP_TIMEOUT);
        let status = self.reap(&mut w);
        info!("supervisor: worker {} stopped ({status})", w.pid);
    }
}
