// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Harness for tests and the demo that run the real system: the
//! `vhost-user-nn` daemon on the host and a QEMU guest (booted with
//! `scripts/qemu.sh`) with the real `virtio_nn` module, driven over its serial
//! console.
//!
//! Nothing here builds anything: `scripts/test.sh` and `scripts/demo.sh`
//! build the daemon, the guest kernel, the module and the initramfs first.
//! Paths can be overridden with `VIRTIO_NN_DAEMON` (daemon binary) and the
//! variables `scripts/lib.sh` reads (`VIRTIO_NN_CACHE`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nn_core::{fixed, Model};

pub mod frontend;

/// How long a guest may take to boot to its shell under TCG.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// How long one shell command in the guest may take.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The default model file.
pub fn default_model() -> PathBuf {
    repo().join("weights/default.safetensors")
}

/// The daemon binary: `$VIRTIO_NN_DAEMON`, else the newer of the release and
/// debug builds.
pub fn daemon_bin() -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTIO_NN_DAEMON") {
        return Ok(p.into());
    }
    ["release", "debug"]
        .iter()
        .map(|p| repo().join("target").join(p).join("vhost-user-nn"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "vhost-user-nn is not built: run scripts/test.sh (or cargo build -p vhost-user-nn)",
            )
        })
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    socket: PathBuf,
    admin: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// Options of a [`Daemon`] to start: `Daemon::builder(model).queues(4).admin().start()`.
pub struct DaemonBuilder {
    model: PathBuf,
    queues: Option<u32>,
    admin: bool,
    args: Vec<std::ffi::OsString>,
}

impl DaemonBuilder {
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
    pub fn arg(mut self, arg: impl Into<std::ffi::OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the daemon and waits until its sockets exist.
    pub fn start(self) -> io::Result<Daemon> {
        Daemon::spawn(self)
    }
}

impl Daemon {
    /// Starts the daemon on a fresh socket and waits until it listens.
    pub fn start(model: &Path) -> io::Result<Self> {
        Self::builder(model).start()
    }

    /// A daemon with more options (queues, admin socket, extra arguments).
    pub fn builder(model: &Path) -> DaemonBuilder {
        DaemonBuilder {
            model: model.to_path_buf(),
            queues: None,
            admin: false,
            args: Vec::new(),
        }
    }

    fn spawn(b: DaemonBuilder) -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("virtio-nn-").tempdir()?;
        let socket = dir.path().join("nn.sock");
        let admin = b.admin.then(|| dir.path().join("admin.sock"));
        let log = std::fs::File::create(dir.path().join("daemon.log"))?;
        let mut cmd = Command::new(daemon_bin()?);
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--model")
            .arg(&b.model);
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
            .spawn()?;
        let mut d = Daemon {
            child,
            socket,
            admin,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !d.socket.exists() || d.admin.as_ref().is_some_and(|a| !a.exists()) {
            if let Some(status) = d.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "daemon exited with {status}: {}",
                    d.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("daemon did not create its socket"));
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    /// The admin socket, if the daemon was started with one.
    pub fn admin_socket(&self) -> Option<&Path> {
        self.admin.as_deref()
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("daemon.log")).unwrap_or_default()
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

type Console = Arc<(Mutex<Vec<u8>>, Condvar)>;

/// A QEMU guest at its shell prompt; QEMU is killed when dropped.
pub struct Guest {
    child: Child,
    stdin: ChildStdin,
    console: Console,
    seq: u32,
}

impl Guest {
    /// Boots a guest attached to `daemon` and waits for its shell.
    pub fn boot(daemon: &Daemon) -> io::Result<Self> {
        let mut child = Command::new(repo().join("scripts/qemu.sh"))
            .arg("--socket")
            .arg(daemon.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let console: Console = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        for mut src in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let console = console.clone();
            thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n @ 1..) = src.read(&mut b) {
                    let (lock, cv) = &*console;
                    lock.lock().unwrap().extend_from_slice(&b[..n]);
                    cv.notify_all();
                }
            });
        }
        let mut g = Guest {
            child,
            stdin,
            console,
            seq: 0,
        };
        g.wait_for("virtio-nn: init done", 0, BOOT_TIMEOUT)?;
        // Make the console quiet and predictable: no kernel messages mixed
        // into command output, no echo of what we type.
        g.run("dmesg -n 1; stty -echo")?;
        Ok(g)
    }

    /// Everything the console printed so far (kernel log, init, commands).
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.0.lock().unwrap()).replace('\r', "")
    }

    /// Waits until `needle` appears in the console output after byte `from`;
    /// returns the offset just past it.
    fn wait_for(&mut self, needle: &str, from: usize, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        let (lock, cv) = &*self.console;
        let mut buf = lock.lock().unwrap();
        loop {
            let hay = &buf[from.min(buf.len())..];
            if let Some(p) = hay
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
            {
                return Ok(from + p + needle.len());
            }
            let now = Instant::now();
            if now >= deadline {
                drop(buf);
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "guest did not print {needle:?}; console:\n{}",
                        self.console()
                    ),
                ));
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                drop(buf);
                return Err(io::Error::other(format!(
                    "QEMU exited with {status} before {needle:?}; console:\n{}",
                    self.console()
                )));
            }
            buf = cv
                .wait_timeout(buf, (deadline - now).min(Duration::from_millis(200)))
                .unwrap()
                .0;
        }
    }

    /// Runs one shell command line in the guest; returns its output (stdout
    /// and stderr) and exit status.
    pub fn run(&mut self, cmd: &str) -> io::Result<(String, i32)> {
        self.seq += 1;
        let n = self.seq;
        let start = self.console.0.lock().unwrap().len();
        // The markers are split in the typed line so that an echo of the
        // command cannot match them.
        let line =
            format!("echo '@@BEG''IN{n}@@'; {{ {cmd} ; }} 2>&1; echo \"@@EN\"\"D{n}@@ $?\"\n");
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        let begin = self
            .wait_for(&format!("@@BEGIN{n}@@\r\n"), start, CMD_TIMEOUT)
            .or_else(|_| self.wait_for(&format!("@@BEGIN{n}@@\n"), start, Duration::ZERO))?;
        let end_marker = format!("@@END{n}@@ ");
        let after = self.wait_for(&end_marker, begin, CMD_TIMEOUT)?;
        let eol = self.wait_for("\n", after, CMD_TIMEOUT)?;
        let buf = self.console.0.lock().unwrap();
        let out = String::from_utf8_lossy(&buf[begin..after - end_marker.len()]).replace('\r', "");
        let code = String::from_utf8_lossy(&buf[after..eol])
            .trim()
            .parse()
            .unwrap_or(-1);
        Ok((out, code))
    }

    /// Runs a command that must succeed; returns its output.
    pub fn ok(&mut self, cmd: &str) -> io::Result<String> {
        let (out, code) = self.run(cmd)?;
        if code != 0 {
            return Err(io::Error::other(format!("`{cmd}` exited {code}: {out}")));
        }
        Ok(out)
    }

    /// Powers the guest off and waits for QEMU to exit.
    pub fn shutdown(mut self) -> io::Result<()> {
        let _ = self.stdin.write_all(b"reboot -f\n");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(50));
        }
        Err(io::Error::other("QEMU did not exit after reboot -f"))
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Host reference for `/proc/neural_network/predict`: whole-number inputs,
/// outputs floored to whole numbers.
pub fn reference_int(model: &Model, input: &[i32]) -> Vec<i32> {
    let x: Vec<i32> = input
        .iter()
        .map(|&v| fixed::from_int(v).expect("input fits Q16.16"))
        .collect();
    let y = model.mlp.predict(&x).expect("input width matches");
    y.into_iter().map(fixed::to_int).collect()
}

/// Host reference for `/proc/neural_network/predict_q16`: raw Q16.16 in and out.
pub fn reference_q16(model: &Model, input: &[i32]) -> Vec<i32> {
    model.mlp.predict(input).expect("input width matches")
}

/// `1,2,3`-style text of a vector.
pub fn csv(v: &[i32]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses the driver's `a,b,c\n` answer.
pub fn parse_csv(s: &str) -> Option<Vec<i32>> {
    s.trim().split(',').map(|t| t.trim().parse().ok()).collect()
}
