# SPDX-License-Identifier: GPL-2.0
"""Harness for the end-to-end tests of virtio-nn: the daemon, a QEMU guest
driven over QMP (qemu.qmp) and its serial console, and host references.

Nothing here depends on avocado: the test classes in test_nn.py own the
objects and call their cleanup from tearDown; tests/guest/run-guest-test.py
(the in-guest driver suite) uses the same objects.

Console protocol: scripts/qemu.sh --serial unix:PATH makes QEMU wait for
this client before starting the guest, so nothing is lost. The initramfs's
/init prints "virtio-nn: init done" and starts a shell; with the kernel
argument nn.echo=off the console does not echo. Guest.run(cmd) sends
    { cmd ; } 2>&1; echo "@@END <n> $?"
and returns (rc, output) read up to that marker line. Console printk is
silenced (dmesg -n 1) so kernel messages never interleave with outputs; the
kernel log is read with dmesg instead.
"""

import functools
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
RELEASE = os.path.join(REPO, "target", "release")
DAEMON = os.environ.get("VIRTIO_NN_DAEMON", os.path.join(RELEASE, "vhost-user-nn"))
MODEL_TOOL = os.environ.get("VIRTIO_NN_MODEL_TOOL", os.path.join(RELEASE, "nn-model"))
DEFAULT_MODEL = os.path.join(REPO, "weights", "default.safetensors")
BAD_LOG_FILE = os.path.join(REPO, "tests", "kernel-log-bad.txt")


def _bad_log_patterns():
    """(patterns, exceptions) of tests/kernel-log-bad.txt, the one list of
    kernel-log lines that mean a bug (KASAN, lockdep, sleeping in atomic,
    warnings, oopses, ...)."""
    patterns, exceptions = [], []
    with open(BAD_LOG_FILE) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            (exceptions if line.startswith("!") else patterns).append(line.lstrip("!"))
    return patterns, exceptions


_BAD, _BAD_EXCEPTIONS = _bad_log_patterns()
BAD_LOG = re.compile("|".join(re.escape(p) for p in _BAD))


@functools.lru_cache(maxsize=None)
def abi():
    """The guest-facing definitions, from their one source (nn-core's
    protocol.rs, dev_abi.rs, proc_text.rs) through `nn-model abi`: a dict
    with virtio_id, config_size, dev (path, request_magic / null_magic /
    response_magic as {"value", "tag"}, header_len, max_write_len,
    request_header / response_header as [name, byte offset] pairs) and proc
    (max_write_len, whole_range, q16_range)."""
    out = subprocess.run([MODEL_TOOL, "abi"], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def dev_magic(kind):
    """The /dev/neural_network magic 'request', 'null' or 'response'."""
    return abi()["dev"][f"{kind}_magic"]["value"]


def dev_request(in_dim, values, num_samples=1, timeout_ms=0, magic=None):
    """A /dev/neural_network request as 32-bit words: the header (laid out
    as nn-model abi says) then values. magic defaults to the request magic;
    nothing is checked, so that tests can build bad requests."""
    dev = abi()["dev"]
    fields = dict(magic=dev_magic("request") if magic is None else magic,
                  num_samples=num_samples, in_dim=in_dim, timeout_ms=timeout_ms)
    header = [0] * (dev["header_len"] // 4)
    for name, offset in dev["request_header"]:
        header[offset // 4] = fields[name]
    return header + list(values)


def dev_response(words):
    """The header of a /dev/neural_network answer given as 32-bit words: a
    dict of its fields (magic, num_samples, out_dim, generation), and the
    outputs after it."""
    dev = abi()["dev"]
    head = {name: words[offset // 4] for name, offset in dev["response_header"]}
    return head, words[dev["header_len"] // 4:]


def _cache():
    return os.environ.get("VIRTIO_NN_CACHE", os.path.expanduser("~/.cache/virtio-nn"))


def kernel_paths(variant):
    """(bzImage, module dir) of a kernel variant ('plain' or 'debug')."""
    c = _cache()
    if variant == "debug":
        return (os.path.join(c, "linux-debug/arch/x86/boot/bzImage"),
                os.path.join(c, "mod-debug/guest-driver"))
    return (os.path.join(c, "linux/arch/x86/boot/bzImage"), os.path.join(REPO, "guest-driver"))


def csv(values):
    return ",".join(str(v) for v in values)


def reference(model, values, q16=True):
    """Host reference answer (nn-model predict) as the guest prints it."""
    cmd = [MODEL_TOOL, "predict", model, "--input", csv(values)]
    if q16:
        cmd.insert(2, "--q16")
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def model_info(model):
    out = subprocess.run([MODEL_TOOL, "info", model], check=True, capture_output=True,
                         text=True).stdout
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def model_dims(model):
    """Layer widths of a model file, e.g. [16, 32, 4]."""
    return [int(x) for x in re.findall(r"\d+", model_info(model)["dims"])]


def generate_model(path, dims, seed):
    subprocess.run([MODEL_TOOL, "generate", "--dims", csv(dims), "--seed", str(seed),
                    "--out", path], check=True, stdout=subprocess.DEVNULL)
    return path


def host_tsc_append():
    """Kernel arguments for a usable guest clock under TCG (as tests/guest)."""
    append = "tsc=reliable "
    try:
        with open("/proc/cpuinfo") as f:
            mhz = next(float(l.split(":")[1]) for l in f if l.startswith("cpu MHz"))
        append += f"tsc_early_khz={int(mhz * 1000)} "
    except (OSError, StopIteration, ValueError):
        pass
    return append


class UpgradeRefused(Exception):
    """The supervisor refused a worker upgrade (ctl's message)."""


class Daemon:
    """vhost-user-nn with an admin socket, in its own process group."""

    def __init__(self, workdir, model, queues=1, kernel_path="auto", log=None, name="daemon",
                 sockdir=None, test_mode=False):
        # sockets in a short directory (sun_path is 108 bytes; avocado's
        # work directories are longer)
        self.workdir = workdir
        sockdir = sockdir or workdir
        self.sock = os.path.join(sockdir, "nn.sock")
        self.admin = os.path.join(sockdir, "admin.sock")
        self.model = model
        self.queues = queues
        self.kernel_path = kernel_path
        self.log = log
        self.logfile = os.path.join(workdir, f"{name}.log")
        self.test_mode = test_mode
        self.proc = None
        self.generation = None

    def start(self):
        for p in (self.sock, self.admin):
            if os.path.exists(p):
                os.unlink(p)
        env = dict(os.environ, NN_CORE_KERNEL=self.kernel_path)
        with open(self.logfile, "ab") as logf:
            self.proc = subprocess.Popen(
                [DAEMON, "--socket-path", self.sock, "--admin-socket", self.admin,
                 "--queues", str(self.queues)]
                + (["--model", self.model] if self.model else [])
                + (["--test-mode"] if self.test_mode else []),
                stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            if os.path.exists(self.sock) and os.path.exists(self.admin):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: "
                                   + open(self.logfile).read()[-2000:])
            time.sleep(0.05)
        raise RuntimeError("the daemon did not create its sockets")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def admin_cmd(self, cmd, timeout=30, **args):
        """One admin-socket request (line-delimited JSON); returns the reply."""
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(timeout)
        try:
            s.connect(self.admin)
            s.sendall((json.dumps(dict(cmd=cmd, **args)) + "\n").encode())
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        return json.loads(buf)

    def status(self):
        return self.admin_cmd("status")

    def load(self, path):
        r = self.admin_cmd("load", path=path)
        if not r.get("ok"):
            raise RuntimeError(f"admin load {path}: {r}")
        return r["generation"]

    def set_delay(self, ms):
        """Test-only slow device (--test-mode): every request waits ms."""
        r = self.admin_cmd("test-delay", ms=ms)
        if not r.get("ok"):
            raise RuntimeError(f"admin test-delay {ms}: {r}")

    def signal(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def kill9(self):
        """SIGKILL the process started (the supervisor; its worker dies with
        it): QEMU's socket closes, the unplug/replug case."""
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    # -- the supervisor's worker (backend/SUPERVISOR.md) ---------------------
    def supervisor_status(self):
        """The admin status's `supervisor` part: pid, restarts, upgrades,
        last_exit, last_upgrade_error (None with --no-supervisor)."""
        return self.status().get("supervisor")

    def worker_pid(self):
        """The pid of the worker, the process that answers the admin socket."""
        return self.status()["pid"]

    def wait_worker(self, old_pid, timeout=60):
        """Wait until a worker other than old_pid answers the admin socket
        (a connection made while no worker runs waits, or breaks if it was
        taken by a dying one); returns the new worker's pid."""
        deadline = time.time() + timeout
        while True:
            try:
                pid = self.worker_pid()
                if pid != old_pid:
                    return pid
            except (OSError, ValueError, KeyError):
                pass
            if time.time() > deadline:
                raise RuntimeError(f"no worker other than {old_pid} within {timeout} s")
            time.sleep(0.02)

    def kill_worker(self):
        """SIGKILL the worker (not the supervisor: QEMU's connection stays
        and the supervisor starts another worker); returns its pid."""
        pid = self.worker_pid()

        def parent(p):
            with open(f"/proc/{p}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        # a worker is the supervisor's child, or its spawner's (the
        # supervisor's child) since the supervisor is sealed by seccomp
        ancestors = [parent(pid)]
        ancestors.append(parent(ancestors[0]))
        if self.proc is None or pid == self.proc.pid or self.proc.pid not in ancestors:
            raise RuntimeError(f"pid {pid} from the admin status is not a worker of "
                               f"{self.proc and self.proc.pid} (ancestors {ancestors})")
        os.kill(pid, signal.SIGKILL)
        return pid

    def upgrade(self, binary=None, timeout=90):
        """`vhost-user-nn ctl upgrade [--binary B]`: a new worker replaces the
        running one; returns the new worker's pid. Raises UpgradeRefused
        with ctl's message if the supervisor refuses (the old one serves on)."""
        old = self.worker_pid()
        cmd = [DAEMON, "ctl", "--admin-socket", self.admin, "upgrade"]
        if binary is not None:
            cmd += ["--binary", binary]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise UpgradeRefused((r.stderr or r.stdout).strip())
        return self.wait_worker(old)

    def stop(self):
        """SIGTERM (SIGKILL after 10 s); the daemon removes its sockets."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        for p in (self.sock, self.admin):
            if os.path.exists(p):
                os.unlink(p)
        refused = self.sandbox_refusals()
        if refused:
            raise RuntimeError("the daemon's sandbox refused system calls it needed: "
                               + "; ".join(refused[:5]))

    def sandbox_refusals(self):
        """Lines of the daemon's log where its seccomp filter refused a call
        (`seccomp: system call N refused`, or a worker killed by SIGSYS): a
        path the allow list misses. Every guest test runs the filter in its
        production mode, so any such line fails the test."""
        try:
            with open(self.logfile, errors="replace") as f:
                return [l.strip() for l in f
                        if "seccomp: system call" in l or "killed by SIGSYS" in l]
        except FileNotFoundError:
            return []


class GuestError(Exception):
    pass


class Guest:
    """A QEMU guest (scripts/qemu.sh) with QMP and the serial console."""

    def __init__(self, workdir, daemon, kernel, initrd, smp=1, queues=1, mem="512M",
                 log=None, name="guest", append="", sockdir=None, vq_size=None):
        self.workdir = workdir
        self.daemon = daemon
        self.kernel = kernel
        self.initrd = initrd
        self.smp = smp
        self.queues = queues
        self.vq_size = vq_size
        self.mem = mem
        self.log = log
        self.name = name
        self.append = append
        sockdir = sockdir or workdir
        self.serial_path = os.path.join(sockdir, f"{name[:12]}-ser.sock")
        self.qmp_path = os.path.join(sockdir, f"{name[:12]}-qmp.sock")
        self.consolelog = os.path.join(workdir, f"{name}-console.log")
        self.qemulog = os.path.join(workdir, f"{name}-qemu.log")
        self.proc = None
        self.qmp = None
        self.ser = None
        self.buf = ""
        self.cond = threading.Condition()
        self.closed = False
        self.seq = 0
        self.boot_s = None

    # -- start / stop -----------------------------------------------------
    def start(self, timeout=180):
        for p in (self.serial_path, self.qmp_path):
            if os.path.exists(p):
                os.unlink(p)
        append = host_tsc_append() + "nn.echo=off " + self.append
        cmd = [os.path.join(REPO, "scripts/qemu.sh"), "--serial", "unix:" + self.serial_path,
               "--qmp", self.qmp_path, "--smp", str(self.smp), "--queues", str(self.queues),
               "--mem", self.mem, "--kernel", self.kernel, "--initrd", self.initrd,
               "--append", append.strip()]
        if self.daemon is not None:
            cmd += ["--socket", self.daemon.sock]
        if self.vq_size:
            cmd += ["--vq-size", str(self.vq_size)]
        t0 = time.time()
        with open(self.qemulog, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 30
        while not os.path.exists(self.serial_path):
            if self.proc.poll() is not None or time.time() > deadline:
                raise GuestError("QEMU did not start: " + self.qemu_output())
            time.sleep(0.05)
        self.ser = socket.socket(socket.AF_UNIX)
        self.ser.connect(self.serial_path)
        threading.Thread(target=self._reader, daemon=True).start()
        self._connect_qmp()
        self.wait_for("virtio-nn: init done", timeout)
        self.boot_s = time.time() - t0
        time.sleep(0.3)
        # no prompt, no console printk; the kernel log is read with dmesg
        self.send("PS1=''; PS2=''; export PS1 PS2; set +m; dmesg -n 1\n")
        self.run("true")
        return self

    def _connect_qmp(self):
        from qemu.qmp.legacy import QEMUMonitorProtocol
        deadline = time.time() + 30
        while True:
            try:
                self.qmp = QEMUMonitorProtocol(self.qmp_path)
                self.qmp.connect(negotiate=True)
                return
            except Exception:  # noqa: BLE001 - QEMU not listening yet
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.1)

    def _reader(self):
        with open(self.consolelog, "a", errors="replace") as logf:
            while True:
                try:
                    chunk = self.ser.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                text = chunk.decode(errors="replace").replace("\r", "")
                logf.write(text)
                logf.flush()
                with self.cond:
                    self.buf += text
                    self.cond.notify_all()
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def qemu_output(self):
        try:
            return open(self.qemulog, errors="replace").read()[-3000:]
        except OSError:
            return ""

    def wait_exit(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        """End the guest (reboot -f, then kill) and close everything."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.send("\nreboot -f\n")
            except OSError:
                pass
            if self.wait_exit(15) is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:  # noqa: BLE001 - QEMU is gone
                pass
            self.qmp = None
        if self.ser is not None:
            self.ser.close()
            self.ser = None
        for p in (self.serial_path, self.qmp_path):
            if os.path.exists(p):
                os.unlink(p)

    # -- console -------------------------------------------------------------
    def send(self, text):
        self.ser.sendall(text.encode())

    def wait_for(self, pattern, timeout=60):
        """Wait for a regular expression in the console output (consumed)."""
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        with self.cond:
            while True:
                m = rx.search(self.buf)
                if m:
                    out = self.buf[:m.start()]
                    self.buf = self.buf[m.end():]
                    return m, out
                if self.closed:
                    raise GuestError(f"console closed while waiting for {pattern!r}; "
                                     f"QEMU: {self.qemu_output()}")
                left = deadline - time.time()
                if left <= 0:
                    raise GuestError(f"timeout waiting for {pattern!r}; console tail: "
                                     f"{self.buf[-1500:]!r}")
                self.cond.wait(min(left, 1))

    def run(self, cmd, timeout=120, check=False):
        """Run a shell command line in the guest; returns (rc, output)."""
        self.seq += 1
        n = self.seq
        with self.cond:
            self.buf = ""
        self.send(f"{{ {cmd}\n}} 2>&1; echo \"@@END {n} $?\"\n")
        m, out = self.wait_for(rf"@@END {n} (\d+)\n", timeout)
        rc = int(m.group(1))
        if check and rc != 0:
            raise GuestError(f"guest command failed (rc={rc}): {cmd}\n{out}")
        return rc, out.strip("\n")

    def out(self, cmd, timeout=120):
        """Output of a command that must succeed."""
        return self.run(cmd, timeout, check=True)[1]

    def put_file(self, path, text):
        """Write text to a guest file through the console, in small pieces."""
        self.out(f": >{path}")
        for i in range(0, len(text), 800):
            piece = text[i:i + 800].replace("'", "'\\''")
            self.out(f"printf '%s' '{piece}' >>{path}")

    def put_words(self, path, words, append=False):
        """Write 32-bit little-endian words to a guest file (printf octal
        escapes, in pieces: a console line must stay under the tty's 4096)."""
        if not append:
            self.out(f": >{path}")
        for i in range(0, len(words), 48):
            esc = "".join("".join("\\%03o" % (((v & 0xFFFFFFFF) >> s) & 255)
                                  for s in (0, 8, 16, 24)) for v in words[i:i + 48])
            self.out(f"printf '{esc}' >>{path}")

    def dmesg(self):
        return self.out("dmesg", timeout=60)

    def kv(self, path):
        """A sysfs 'key: value' file as a dict."""
        d = {}
        for line in self.out(f"cat {path}").splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                d[k.strip()] = v.strip()
        return d

    # -- QMP: unplug / replug (daemon restart) ---------------------------------
    def wait_event(self, name, device=None, timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ev = self.qmp.pull_event(wait=max(0.1, deadline - time.time()))
            if ev and ev.get("event") == name and (
                    device is None or ev.get("data", {}).get("device") == device):
                return ev
        raise GuestError(f"no {name} event for {device} within {timeout} s")

    def unplug(self, timeout=30.0):
        """device_del nn0dev, wait for its DEVICE_DELETED, chardev-remove."""
        self.qmp.clear_events()
        self.qmp.cmd("device_del", id="nn0dev")
        self.wait_event("DEVICE_DELETED", device="nn0dev", timeout=timeout)
        self.qmp.cmd("chardev-remove", id="nn0")

    def replug(self, sock):
        """chardev-add (client of the daemon's socket), device_add nn0dev."""
        self.qmp.cmd("chardev-add", id="nn0", backend={
            "type": "socket", "data": {"addr": {"type": "unix", "data": {"path": sock}},
                                       "server": False}})
        self.qmp.cmd("device_add", **self.device_props())

    def device_props(self):
        """device_add arguments of the virtio-nn device: the properties
        scripts/qemu.sh builds (--print-device), the one place they are made."""
        cmd = [os.path.join(REPO, "scripts/qemu.sh"), "--print-device",
               "--queues", str(self.queues)]
        if self.vq_size:
            cmd += ["--vq-size", str(self.vq_size)]
        driver, *props = subprocess.run(cmd, check=True, capture_output=True,
                                        text=True).stdout.strip().split(",")
        args = {"driver": driver}
        for prop in props:
            k, v = prop.split("=", 1)
            args[k] = int(v) if v.isdigit() else v
        return args


def _report(dmesg, start):
    """The text of a kernel report: from START to the end of its stack trace."""
    i = dmesg.find(start)
    if i < 0:
        return ""
    j = dmesg.find("</TASK>", i)
    return dmesg[i:j if j > 0 else i + 8000]


def kmemleak_ours(report):
    """The reports of /sys/kernel/debug/kmemleak whose backtrace has a frame
    of virtio_nn or of its API users (nn_consumer, nn_bench)."""
    blocks = re.split(r"(?m)^(?=unreferenced object)", report)
    return [b.strip() for b in blocks
            if b.startswith("unreferenced object") and re.search(r"\[(virtio_nn|nn_consumer|nn_bench)\]", b)]


def bad_log_lines(dmesg):
    """Lines of a guest kernel log that report a bug (tests/kernel-log-bad.txt).
    The one exception: lockdep's report about the kernel's own
    pciehp locks on hot-unplug (reset_lock vs pci_rescan_remove_lock), when
    it is the only WARNING and has no virtio_nn frame. Returns (bad, notes)."""
    bad = [l for l in dmesg.splitlines()
           if BAD_LOG.search(l) and not any(e in l for e in _BAD_EXCEPTIONS)]
    notes = []
    warnings = [l for l in bad if "WARNING:" in l]
    if (bad and warnings and all("possible circular locking" in l for l in warnings)
            and re.search(r"irq/.*-pciehp.* is trying to acquire lock", dmesg)
            and "virtio_nn" not in _report(dmesg, "possible circular locking")
            and not any(re.search(r"KASAN|sleeping function|BUG:|Oops", l) for l in bad)):
        notes.append("kernel pciehp lockdep report on hot-unplug (no virtio_nn frame): "
                     "not counted")
        bad = []
    return bad, notes
