#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Boots a QEMU guest with virtio_nn.ko and the vhost-user daemon and runs
guest-test.sh in it.

Usage: tests/guest/run-guest-test.py [--keep] [--vq-size N] [--smp N] [--queues N]
                                    [--bench "nn_bench.ko parameters"]

--vq-size N sets the virtqueue size (e.g. 2, so that the concurrent requests
fill the queue and exercise the wait for free descriptors); --keep keeps the
work directory (daemon log, initramfs); --smp N gives the guest N vCPUs;
--queues N is the number of request queues (daemon --queues, scripts/qemu.sh
--queues; QEMU's num_vqs is N + 1 with the event queue); --bench ARGS runs
the kernel benchmark module with ARGS (e.g. "iterations=500 batch=64
threads=2") instead of its short default run.
Env: VIRTIO_NN_KERNEL (a bzImage, e.g. a debug build) and
VIRTIO_NN_MODULE_DIR (where virtio_nn.ko built for that kernel is),
VIRTIO_NN_APPEND (extra kernel command line, e.g. "loglevel=7").

Needs: the built module (guest-driver/virtio_nn.ko), the kernel and QEMU of
scripts/setup-host.sh + scripts/build-kernel.sh, and the daemon and the
nn-model tool in target/debug (override with VIRTIO_NN_DAEMON and
VIRTIO_NN_MODEL_TOOL). Expected answers are computed on the host with
`nn-model predict` (the scalar reference), so the guest's answers are
compared bit for bit.

The runner serves the guest script's "@@HOST:<what>" requests: stop-daemon /
cont-daemon (SIGSTOP/SIGCONT, to make a request time out and then be answered
late), unplug / replug (QMP device_del, daemon restart, device_add).
Exit status 0 if the guest prints "GUEST-TEST: PASS".
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))  # tests/guest -> repository
DAEMON = os.environ.get("VIRTIO_NN_DAEMON", os.path.join(REPO, "target/debug/vhost-user-nn"))
MODEL_TOOL = os.environ.get("VIRTIO_NN_MODEL_TOOL", os.path.join(REPO, "target/debug/nn-model"))
MODEL = os.environ.get("VIRTIO_NN_MODEL", os.path.join(REPO, "weights/default.safetensors"))
TIMEOUT = 600

IN1 = list(range(1, 17))
WX = [-32768, 32767, 0, 0, 1, -1, 100, -100, 32767, 32767, -32768, -32768, 5, 6, 7, -5]
QX = [2147483647, -2147483648, 2147483647, -2147483648, 0, 1, -1, 2147483647,
      2147483647, 2147483647, -2147483648, -2147483648, 100, -100, 32767, -32768]


def csv(values):
    return ",".join(str(v) for v in values)


def reference(values, q16, model=None):
    cmd = [MODEL_TOOL, "predict", "--input", csv(values), model or MODEL]
    if q16:
        cmd.insert(2, "--q16")
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def model_dims():
    out = subprocess.run([MODEL_TOOL, "info", MODEL], check=True, capture_output=True,
                         text=True).stdout
    for line in out.splitlines():
        if line.startswith("dims:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError("no dims in nn-model info output")


class Qmp:
    """A minimal QMP client: commands and the events seen meanwhile."""

    def __init__(self, path):
        for _ in range(100):
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("cannot connect to QMP at " + path)
        self.file = self.sock.makefile("rw")
        self.events = []
        json.loads(self.file.readline())  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        msg = json.loads(self.file.readline())
        if "event" in msg:
            self.events.append(msg)
        return msg

    def cmd(self, name, **args):
        self.file.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.file.flush()
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {name}: {msg['error']}")

    def wait_event(self, name, timeout=30):
        self.sock.settimeout(timeout)
        try:
            while True:
                for e in self.events:
                    if e["event"] == name:
                        self.events.remove(e)
                        return e
                self._read()
        finally:
            self.sock.settimeout(None)


def main():
    keep = "--keep" in sys.argv
    vq_size = []
    if "--vq-size" in sys.argv:
        vq_size = ["--vq-size", sys.argv[sys.argv.index("--vq-size") + 1]]
    qemu_extra = []
    queues = 1
    daemon_extra = []
    if "--queues" in sys.argv:
        queues = int(sys.argv[sys.argv.index("--queues") + 1])
        qemu_extra += ["--queues", str(queues)]
    daemon_extra = ["--queues", str(queues)]
    bench_args = ""
    if "--bench" in sys.argv:
        bench_args = sys.argv[sys.argv.index("--bench") + 1]
    if "--smp" in sys.argv:
        qemu_extra += ["--smp", sys.argv[sys.argv.index("--smp") + 1]]
    if os.environ.get("VIRTIO_NN_KERNEL"):
        qemu_extra += ["--kernel", os.environ["VIRTIO_NN_KERNEL"]]
    # tsc=reliable: without ACPI (no HPET) the guest otherwise ends up on the
    # jiffies clocksource (4 ms steps), which makes the latency figures of
    # /sys/kernel/neural_network/performance and nn_bench.ko useless.
    # Under TCG the guest's TSC is the host's: give its frequency, since the
    # guest's own calibration fails when the host is busy.
    append = "tsc=reliable "
    try:
        with open("/proc/cpuinfo") as f:
            mhz = next(float(l.split(":")[1]) for l in f if l.startswith("cpu MHz"))
        append += f"tsc_early_khz={int(mhz * 1000)} "
    except (OSError, StopIteration, ValueError):
        pass
    append += os.environ.get("VIRTIO_NN_APPEND", "")
    qemu_extra += ["--append", append.strip()]
    module_dir = os.environ.get("VIRTIO_NN_MODULE_DIR", os.path.join(REPO, "guest-driver"))
    work = tempfile.mkdtemp(prefix="virtio-nn-guest-test.")
    sock = os.path.join(work, "nn.sock")
    qmp_path = os.path.join(work, "qmp.sock")
    admin = os.path.join(work, "admin.sock")
    ko = os.path.join(module_dir, "virtio_nn.ko")
    if not os.path.exists(ko):
        sys.exit(f"{ko} missing: build the module first")

    # A private copy: the model in weights/ may be replaced while this runs,
    # and the daemon is restarted on replug.
    global MODEL
    shutil.copy(MODEL, os.path.join(work, "model.safetensors"))
    MODEL = os.path.join(work, "model.safetensors")

    expected = os.path.join(work, "nn-expected")
    with open(expected, "w") as f:
        f.write(f"MODEL='{model_dims().replace(' ', '')}'\n")
        f.write(f"IN1='{csv(IN1)}'\nOUT1='{reference(IN1, False)}'\n")
        f.write("IN1_SPACED='+1, 2 ,3,\t4,5,6,7,8,9,10,11,12,13,14,15,+16'\n")
        q1 = [v << 16 for v in IN1]
        f.write(f"Q1_IN='{csv(q1)}'\nQ1_OUT='{reference(q1, True)}'\n")
        f.write(f"QX_IN='{csv(QX)}'\nQX_OUT='{reference(QX, True)}'\n")
        f.write(f"WX_IN='{csv(WX)}'\nWX_OUT='{reference(WX, False)}'\n")
        f.write(f"VQ_SIZE='{vq_size[1] if vq_size else ''}'\n")
        f.write("EVENTS='1'\n")
        f.write(f"QUEUES='{queues}'\n")
        f.write(f"BENCH_ARGS='{bench_args}'\n")
        # Models to hot-swap in: a wider output, then another input width.
        global MODEL_B, MODEL_C
        MODEL_B = os.path.join(work, "model-b.safetensors")
        MODEL_C = os.path.join(work, "model-c.safetensors")
        for path, dims in ((MODEL_B, "16,24,6"), (MODEL_C, "8,16,3")):
            subprocess.run([MODEL_TOOL, "generate", "--dims", dims, "--seed", "5",
                            "--out", path], check=True, stdout=subprocess.DEVNULL)
        c_in = [(i * 7919) % 100000 - 50000 for i in range(8)]
        f.write(f"B_MODEL='16x24x6'\nB_OUT='{reference(q1, True, MODEL_B)}'\n")
        f.write(f"C_IN='{csv(c_in)}'\nC_OUT='{reference(c_in, True, MODEL_C)}'\n")
    print(open(expected).read(), end="")

    # Users of the kernel API (guest-driver/consumer), if built.
    extra_kos = []
    for name in ("nn_consumer.ko", "nn_bench.ko"):
        path = os.path.join(module_dir, "consumer", name)
        if os.path.exists(path):
            extra_kos += ["--ko", path]
        else:
            print(f"[runner] {path} missing: its checks are skipped", flush=True)

    initrd = os.path.join(work, "initramfs.cpio.gz")
    subprocess.run([os.path.join(REPO, "scripts/build-initramfs.sh"), "--output", initrd,
                    "--no-default-modules", "--ko", ko, *extra_kos,
                    "--add", os.path.join(HERE, "guest-test.sh") + ":/bin/nn-guest-test",
                    "--add", expected + ":/etc/nn-expected"], check=True,
                   stdout=subprocess.DEVNULL)

    daemon_log = open(os.path.join(work, "daemon.log"), "ab")

    def start_daemon():
        if os.path.exists(sock):
            os.unlink(sock)
        d = subprocess.Popen([DAEMON, "--socket-path", sock, "--model", MODEL,
                              "--admin-socket", admin, *daemon_extra],
                             stdout=daemon_log, stderr=subprocess.STDOUT)
        for _ in range(100):
            if os.path.exists(sock):
                return d
            time.sleep(0.05)
        raise RuntimeError("the daemon did not create its socket")

    daemon = start_daemon()
    qemu = subprocess.Popen([os.path.join(REPO, "scripts/qemu.sh"), "--socket", sock,
                             "--initrd", initrd, "--qmp", qmp_path, "--serial", "stdio"] + vq_size + qemu_extra,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    lines = []
    cond = threading.Condition()

    def reader():
        buf = b""
        while True:
            chunk = qemu.stdout.read1(4096)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            with cond:
                for raw in done:
                    line = raw.decode(errors="replace").rstrip("\r")
                    print(line, flush=True)
                    lines.append(line)
                cond.notify_all()
        with cond:
            lines.append(None)
            cond.notify_all()

    threading.Thread(target=reader, daemon=True).start()

    def send(text):
        qemu.stdin.write(text.encode())
        qemu.stdin.flush()

    qmp = Qmp(qmp_path)
    deadline = time.time() + TIMEOUT
    seen = 0
    result = None
    started = False
    while result is None and time.time() < deadline:
        with cond:
            while seen >= len(lines):
                cond.wait(1)
                if time.time() > deadline:
                    break
            new, seen = lines[seen:], len(lines)
        for line in new:
            if line is None:
                result = "QEMU exited"
                break
            if not started and "virtio-nn: init done" in line:
                time.sleep(0.5)
                send("\nsh /bin/nn-guest-test\n")
                started = True
            elif line.startswith("@@HOST:"):
                what = line[len("@@HOST:"):].strip()
                if what == "stop-daemon":
                    daemon.send_signal(signal.SIGSTOP)
                elif what == "cont-daemon":
                    daemon.send_signal(signal.SIGCONT)
                elif what == "cont-daemon-in-3s":
                    threading.Timer(3, daemon.send_signal, (signal.SIGCONT,)).start()
                elif what.startswith("swap-"):
                    model = {"a": MODEL, "b": MODEL_B, "c": MODEL_C}[what[5:]]
                    subprocess.run([DAEMON, "ctl", "--admin-socket", admin, "load", model],
                                   check=True, stdout=subprocess.DEVNULL)
                elif what == "unplug":
                    qmp.cmd("device_del", id="nn0dev")
                    qmp.wait_event("DEVICE_DELETED")
                    qmp.cmd("chardev-remove", id="nn0")
                    daemon.terminate()
                    daemon.wait()
                elif what == "replug":
                    daemon = start_daemon()
                    qmp.cmd("chardev-add", id="nn0", backend={
                        "type": "socket", "data": {
                            "addr": {"type": "unix", "data": {"path": sock}},
                            "server": False}})
                    props = {"virtio-id": 38, "num_vqs": queues + 1, "config_size": 64}
                    if vq_size:
                        props["vq_size"] = int(vq_size[1])
                    qmp.cmd("device_add", driver="vhost-user-test-device-pci", id="nn0dev",
                            bus="rp0", chardev="nn0", **props)
                print(f"[runner] done: {what}", flush=True)
                send("ok\n")
            elif line.startswith("GUEST-TEST:"):
                result = line
                break
    send("reboot -f\n")
    try:
        qemu.wait(timeout=20)
    except subprocess.TimeoutExpired:
        qemu.kill()
    daemon.send_signal(signal.SIGCONT)
    daemon.terminate()
    daemon.wait()
    print(f"[runner] result: {result}; work dir {work}")
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result == "GUEST-TEST: PASS" else 1)


if __name__ == "__main__":
    main()
