// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Harness for tests and the demo that run the real system: the
//! `vhost-user-nn` daemon on the host and a QEMU guest (booted with
//! `scripts/qemu.sh`) with the real `virtio_nn` module, driven over its serial
//! console.
//!
//! Nothing here builds anything: `scripts/test.sh` and `scripts/demo.sh`
//! build the daemon, the guest kernel, the module and the initramfs first.
//! The daemon binary is `$VIRTIO_NN_DAEMON` (required, see [`daemon_bin`]);
//! other paths can be overridden with the variables `scripts/lib.sh` reads
//! (`VIRTIO_NN_CACHE`).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nn_core::proc_text::{self, Format};
use nn_core::Model;

pub use vhost_user_nn::testing::daemon::{Daemon, DaemonBuilder};

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

/// The daemon binary: `$VIRTIO_NN_DAEMON`, which must be set (to an
/// existing file). Nothing is guessed: cargo does not build the daemon for
/// this crate, so a binary found in target/ could be stale. (The tests that
/// need no guest live in backend/tests and run the binary cargo built.)
pub fn daemon_bin() -> io::Result<PathBuf> {
    let Some(p) = std::env::var_os("VIRTIO_NN_DAEMON") else {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "VIRTIO_NN_DAEMON is not set: point it at the vhost-user-nn binary to test \
             (scripts/test.sh and scripts/demo.sh set it to target/release/vhost-user-nn \
             after building it)",
        ));
    };
    let p = PathBuf::from(p);
    if !p.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("VIRTIO_NN_DAEMON={}: no such file", p.display()),
        ));
    }
    Ok(p)
}

/// A daemon to start from [`daemon_bin`], serving `model`.
pub fn daemon(model: &Path) -> io::Result<DaemonBuilder> {
    Ok(Daemon::builder(daemon_bin()?).model(model))
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

/// Host reference for a `/proc/neural_network` file of `format`: `input`
/// as written to it, the outputs as it shows them (the driver's own
/// conversions, `nn_core::proc_text`).
pub fn reference(model: &Model, format: Format, input: &[i32]) -> Vec<i32> {
    let x: Vec<i32> = input
        .iter()
        .map(|&v| {
            format
                .to_q16(v.into())
                .expect("input in the format's range")
        })
        .collect();
    let y = model.mlp.predict(&x).expect("input width matches");
    y.into_iter().map(|v| format.from_q16(v)).collect()
}

/// Host reference for `/proc/neural_network/predict`: whole-number inputs,
/// outputs floored to whole numbers.
pub fn reference_int(model: &Model, input: &[i32]) -> Vec<i32> {
    reference(model, Format::Whole, input)
}

/// Host reference for `/proc/neural_network/predict_q16`: raw Q16.16 in and out.
pub fn reference_q16(model: &Model, input: &[i32]) -> Vec<i32> {
    reference(model, Format::Q16, input)
}

/// `1,2,3`-style text of a vector, as the driver prints values (without
/// the final newline).
pub fn csv(v: &[i32]) -> String {
    let mut out = vec![0u8; proc_text::formatted_len(v.len())];
    let len = proc_text::format_values(v, Format::Q16, &mut out);
    out.truncate(len - 1);
    String::from_utf8(out).expect("decimal digits")
}

/// Parses the driver's `a,b,c\n` answer (the values as shown) with the
/// driver's parser.
pub fn parse_csv(s: &str) -> Option<Vec<i32>> {
    let mut v = vec![0; proc_text::count_fields(s.as_bytes())];
    proc_text::parse_values(s.as_bytes(), Format::Q16, &mut v).ok()?;
    Some(v)
}

/// `tests/kernel-log-bad.txt`, the one list of kernel-log lines that mean
/// a bug (also read by `tests/avocado/nnlib.py`).
const BAD_KERNEL_LOG: &str = include_str!("../kernel-log-bad.txt");

/// The lines of a guest kernel log that report a bug: those holding one of
/// the strings of `tests/kernel-log-bad.txt` and none of its `!` exceptions.
/// (nnlib's `bad_log_lines` also forgives the kernel's own pciehp lockdep
/// report on a hot-unplug, which these tests never do.)
pub fn bad_kernel_log_lines(log: &str) -> Vec<&str> {
    let entries = BAD_KERNEL_LOG
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let (exceptions, patterns): (Vec<&str>, Vec<&str>) = entries.partition(|l| l.starts_with('!'));
    log.lines()
        .filter(|l| patterns.iter().any(|p| l.contains(p)))
        .filter(|l| !exceptions.iter().any(|e| l.contains(&e[1..])))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_kernel_log() {
        let log = "virtio_nn: probe\n\
                   WARNING: CPU: 0 PID: 1 at lib/foo.c:1\n\
                   kmemleak: 1 new suspected memory leaks (BUG: not this)\n\
                   Kernel panic - not syncing\n";
        assert_eq!(
            bad_kernel_log_lines(log),
            [
                "WARNING: CPU: 0 PID: 1 at lib/foo.c:1",
                "Kernel panic - not syncing"
            ]
        );
        assert!(bad_kernel_log_lines("virtio_nn: init done\n").is_empty());
    }

    #[test]
    fn proc_text_helpers() {
        assert_eq!(csv(&[1, -2, 3]), "1,-2,3");
        assert_eq!(csv(&[]), "");
        assert_eq!(parse_csv("1,-2,3\n"), Some(vec![1, -2, 3]));
        assert_eq!(parse_csv("1,x"), None);
    }
}
