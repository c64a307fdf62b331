// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The spawner: a process started before the supervisor seals itself with
//! its seccomp filter, that starts workers on the supervisor's behalf.
//!
//! A seccomp filter is inherited across fork and execve and can only be
//! narrowed, so a supervisor that may not call `execve` (or anything a
//! worker needs) cannot start a worker itself. The spawner is this binary
//! run with `--spawner-fd`: it keeps no state but its children, takes
//! requests only from the supervisor over a socket pair, and reports each
//! child's exit. It dies with the supervisor (`PR_SET_PDEATHSIG`), and its
//! workers with it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use log::warn;
use rustix::event::{poll, PollFd, PollFlags, Timespec};
use serde::{Deserialize, Serialize};

use crate::control;

/// Supervisor to spawner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spawn {
    /// The executable.
    pub binary: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Environment variables set on top of the spawner's.
    pub env: Vec<(OsString, OsString)>,
    /// The descriptor number each attached descriptor gets in the child.
    pub child_fds: Vec<i32>,
}

/// Spawner to supervisor.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "msg", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Report {
    /// The child runs; its pidfd is attached (opened by the spawner before
    /// it can reap the child, so it cannot name a reused pid).
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// It could not be started.
    Failed {
        /// Why.
        error: String,
    },
    /// A child ended.
    Exited {
        /// Its pid.
        pid: u32,
        /// How (e.g. "signal: 9 (SIGKILL)").
        status: String,
    },
}

/// The supervisor's handle on its spawner.
pub struct Spawner {
    sock: OwnedFd,
    child: Child,
    /// The spawner's pidfd: the sealed supervisor may not `kill` or `wait4`.
    pidfd: Option<OwnedFd>,
    /// Exits reported while waiting for something else.
    exits: HashMap<u32, String>,
}

impl Spawner {
    /// Starts the spawner (this binary, `exe`).
    pub fn start(exe: &std::path::Path) -> io::Result<Self> {
        let (mine, theirs) = control::pair()?;
        let mut cmd = Command::new(exe);
        // `--spawner-fd` is exclusive, and clap counts an option's variable
        // as the option given: with NN_CORE_KERNEL (`--kernel`) in the
        // environment the spawner would refuse to start. Workers get the
        // kernel as an argument.
        cmd.args(["--spawner-fd", "3"])
            .env_remove("NN_CORE_KERNEL")
            .env(control::ENV_PARENT, std::process::id().to_string());
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: theirs,
            child_fd: 3,
        }])
        .map_err(|_| io::Error::other("descriptor numbers collide"))?;
        let child = cmd.spawn()?;
        let pidfd = rustix::process::pidfd_open(
            rustix::process::Pid::from_child(&child),
            rustix::process::PidfdFlags::empty(),
        )
        .ok();
        Ok(Self {
            sock: mine,
            child,
            pidfd,
            exits: HashMap::new(),
        })
    }

    /// Starts `req` with `fds` (one per `req.child_fds`); its pid and pidfd.
    pub fn spawn(&mut self, req: &Spawn, fds: &[BorrowedFd<'_>]) -> Result<(u32, OwnedFd), String> {
        control::send(self.sock.as_fd(), req, fds).map_err(|e| format!("spawner: {e}"))?;
        loop {
            match self.next_with_fds(Duration::from_secs(30))? {
                (Report::Spawned { pid }, fds) => {
                    let pidfd = fds
                        .into_iter()
                        .next()
                        .ok_or_else(|| format!("no pidfd came with worker {pid}"))?;
                    return Ok((pid, pidfd));
                }
                (Report::Failed { error }, _) => return Err(error),
                (Report::Exited { pid, status }, _) => {
                    self.exits.insert(pid, status);
                }
            }
        }
    }

    /// How child `pid` ended, waiting up to `timeout` for the report.
    pub fn exit_status(&mut self, pid: u32, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exits.remove(&pid) {
                return s;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Ok(Report::Exited { pid: p, status }) => {
                    self.exits.insert(p, status);
                }
                Ok(_) => {}
                Err(e) => return format!("unknown ({e})"),
            }
        }
    }

    fn next(&mut self, timeout: Duration) -> Result<Report, String> {
        self.next_with_fds(timeout).map(|(r, _)| r)
    }

    fn next_with_fds(&mut self, timeout: Duration) -> Result<(Report, Vec<OwnedFd>), String> {
        let ts = Timespec::try_from(timeout).ok();
        let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
        match poll(&mut fds, ts.as_ref()) {
            Ok(n) if n > 0 => {}
            Ok(_) => return Err("no report from the spawner in time".into()),
            Err(e) => return Err(format!("spawner: {e}")),
        }
        match control::recv::<Report>(self.sock.as_fd()) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("the spawner is gone".into()),
            Err(e) => Err(format!("spawner: {e}")),
        }
    }
}

impl Drop for Spawner {
    /// Kills the spawner (and so its workers). Through its pidfd, and
    /// without waiting: the supervisor's seccomp filter allows neither
    /// `kill` nor `wait4`, and the supervisor drops its spawner only when
    /// it exits (whoever reaps orphans reaps the spawner).
    fn drop(&mut self) {
        match &self.pidfd {
            Some(fd) => {
                let _ = rustix::process::pidfd_send_signal(fd, rustix::process::Signal::KILL);
            }
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
    }
}

/// The spawner's main loop: serves requests on `sock` until the supervisor
/// closes it.
pub fn serve(sock: OwnedFd) -> Result<(), String> {
    let (sigchld, sigchld_w) = UnixStream::pair().map_err(|e| e.to_string())?;
    signal_hook::low_level::pipe::register(signal_hook::consts::SIGCHLD, sigchld_w)
        .map_err(|e| format!("SIGCHLD: {e}"))?;
    sigchld.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut children: HashMap<u32, Child> = HashMap::new();
    loop {
        let mut fds = [
            PollFd::new(&sock, PollFlags::IN),
            PollFd::new(&sigchld, PollFlags::IN),
        ];
        if let Err(e) = poll(&mut fds, None) {
            if e != rustix::io::Errno::INTR {
                return Err(format!("spawner: poll: {e}"));
            }
            continue;
        }
        let (req, chld) = (!fds[0].revents().is_empty(), !fds[1].revents().is_empty());
        if chld {
            let _ = rustix::io::read(&sigchld, &mut [0u8; 64]);
            let ended: Vec<(u32, String)> = children
                .iter_mut()
                .filter_map(|(&pid, c)| match c.try_wait() {
                    Ok(Some(status)) => Some((pid, status.to_string())),
                    _ => None,
                })
                .collect();
            for (pid, status) in ended {
                children.remove(&pid);
                let _ = control::send(sock.as_fd(), &Report::Exited { pid, status }, &[]);
            }
        }
        if req {
            let (spawn, fds) = match control::recv::<Spawn>(sock.as_fd()) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => {
                    warn!("spawner: bad request: {e}");
                    continue;
                }
            };
            // The child is reaped only by this loop, after the report: its
            // pidfd names it, not a reused pid.
            let started = start(&spawn, fds).and_then(|child| {
                let pidfd = rustix::process::pidfd_open(
                    rustix::process::Pid::from_child(&child),
                    rustix::process::PidfdFlags::empty(),
                );
                let pid = child.id();
                children.insert(pid, child);
                pidfd
                    .map(|fd| (pid, fd))
                    .map_err(|e| format!("pidfd_open of worker {pid}: {e}"))
            });
            let (report, pidfd) = match started {
                Ok((pid, fd)) => (Report::Spawned { pid }, Some(fd)),
                Err(error) => (Report::Failed { error }, None),
            };
            let attached: Vec<BorrowedFd<'_>> = pidfd.iter().map(|f| f.as_fd()).collect();
            if let Err(e) = control::send(sock.as_fd(), &report, &attached) {
                return Err(format!("spawner: the supervisor is gone: {e}"));
            }
        }
    }
}

fn start(req: &Spawn, fds: Vec<OwnedFd>) -> Result<Child, String> {
    if fds.len() != req.child_fds.len() {
        return Err("descriptors and their numbers differ in count".into());
    }
    let mappings = fds
        .into_iter()
        .zip(&req.child_fds)
        .map(|(parent_fd, &child_fd)| FdMapping {
            parent_fd,
            child_fd,
        })
        .collect();
    let mut cmd = Command::new(&req.binary);
    cmd.args(&req.args)
        .envs(req.env.iter().map(|(k, v)| (k, v)))
        .env(control::ENV_PARENT, std::process::id().to_string());
    cmd.fd_mappings(mappings)
        .map_err(|_| "descriptor numbers collide".to_string())?;
    cmd.spawn()
        .map_err(|e| format!("cannot start {}: {e}", req.binary.display()))
}
