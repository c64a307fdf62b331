// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! A `vhost-user-nn` process for tests: started on sockets in a fresh
//! temporary directory, killed (and the directory removed) when dropped.
//!
//! The binary is always given by the caller; nothing here guesses which
//! build to run. The backend's integration tests pass
//! `env!("CARGO_BIN_EXE_vhost-user-nn")` (the binary cargo built for this
//! very test run); the `virtio-nn-tests` crate passes `$VIRTIO_NN_DAEMON`.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a daemon may take to create its sockets.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    admin: Option<PathBuf>,
    dir: TempDir,
}

/// Options of a [`Daemon`] to start:
/// `Daemon::builder(bin).model(m).queues(4).admin().start()`.
#[derive(Clone, Debug)]
pub struct DaemonBuilder {
    bin: PathBuf,
    model: Option<PathBuf>,
    queues: Option<u32>,
    admin: bool,
    args: Vec<OsString>,
}

impl DaemonBuilder {
    /// `--model FILE` (without it the daemon starts with no model).
    pub fn model(mut self, model: impl Into<PathBuf>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// `--queues n`.
    pub fn queues(mut self, n: u32) -> Self {
        self.queues = Some(n);
        self
    }

    /// `--admin-socket` in the daemon's temporary directory (see
    /// [`Daemon::admin_socket`]).
    pub fn admin(mut self) -> Self {
        self.admin = true;
        self
    }

    /// Any other argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the daemon and waits until its sockets exist.
    pub fn start(self) -> io::Result<Daemon> {
        Daemon::spawn(self)
    }
}

impl Daemon {
    /// A daemon run from the binary `bin` (see the module documentation).
    pub fn builder(bin: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder {
            bin: bin.into(),
            model: None,
            queues: None,
            admin: false,
            args: Vec::new(),
        }
    }

    fn spawn(b: DaemonBuilder) -> io::Result<Self> {
        if !b.bin.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("daemon binary {} does not exist", b.bin.display()),
            ));
        }
        let dir = TempDir::new()?;
        let socket = dir.path().join("nn.sock");
        let admin = b.admin.then(|| dir.path().join("admin.sock"));
        let log = File::create(dir.path().join("daemon.log"))?;
        let mut cmd = Command::new(&b.bin);
        cmd.arg("--socket-path").arg(&socket);
        if let Some(m) = &b.model {
            cmd.arg("--model").arg(m);
        }
        if let Some(q) = b.queues {
            cmd.arg("--queues").arg(q.to_string());
        }
        if let Some(a) = &admin {
            cmd.arg("--admin-socket").arg(a);
        }
        let child = cmd
            .args(&b.args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", b.bin.display())))?;
        let mut d = Daemon {
            child,
            socket,
            admin,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while !d.socket.exists() || d.admin.as_ref().is_some_and(|a| !a.exists()) {
            if let Some(status) = d.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "daemon exited with {status}: {}",
                    d.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "daemon did not create its sockets: {}",
                    d.log()
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// The admin socket, if the daemon was started with one.
    pub fn admin_socket(&self) -> Option<&Path> {
        self.admin.as_deref()
    }

    /// Sends one admin request (a JSON line) and returns the reply; panics
    /// without an admin socket.
    pub fn admin_request(&self, line: &str) -> io::Result<serde_json::Value> {
        let path = self
            .admin_socket()
            .expect("the daemon was started without .admin()");
        crate::admin::request(path, line)
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `true` while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system's temporary directory, removed with
/// everything in it when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let base = std::env::temp_dir();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("virtio-nn-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(Self(path)),
                // A directory left by an earlier process with the same pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
