#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""Boots a QEMU guest with virtio_nn.ko and the vhost-user daemon and runs
guest-test.sh in it, with the harness of the avocado tests
(tests/avocado/nnlib.py: daemon, QEMU over QMP and the serial console, host
references). Run it with the Python of scripts/setup-avocado.sh (it needs
qemu.qmp), as scripts/test.sh does.

Usage: tests/guest/run-guest-test.py [--keep] [--vq-size N] [--smp N] [--queues N]
                                    [--bench "nn_bench.ko parameters"]

--vq-size N sets the virtqueue size (e.g. 2, so that the concurrent requests
fill the queue and exercise the wait for free descriptors); --keep keeps the
work directory (daemon log, console log, initramfs); --smp N gives the guest
N vCPUs; --queues N is the number of request queues (daemon --queues,
scripts/qemu.sh --queues; QEMU's num_vqs is N + 1 with the event queue);
--bench ARGS runs the kernel benchmark module with ARGS (e.g.
"iterations=500 batch=64 threads=2") instead of its short default run.
Env: VIRTIO_NN_KERNEL (a bzImage, e.g. a debug build) and
VIRTIO_NN_MODULE_DIR (where virtio_nn.ko built for that kernel is),
VIRTIO_NN_APPEND (extra kernel command line, e.g. "loglevel=7"), and
nnlib's VIRTIO_NN_DAEMON / VIRTIO_NN_MODEL_TOOL (default: target/release).

Expected answers are computed on the host with `nn-model predict` (the
scalar reference), so the guest's answers are compared bit for bit. The
runner serves the guest script's "@@HOST:<what>" requests: stop-daemon /
cont-daemon (SIGSTOP/SIGCONT, to make a request time out and then be
answered late), swap-a|b|c|w (admin load), unplug / replug (QMP device_del,
daemon restart, device_add), kernel-log (the guest's dmesg follows; the
runner answers "clean" or what nnlib.bad_log_lines found), replug-b (the daemon
restarted with model b: generation 1 again, other weights). The
/dev/neural_network magics and header layouts go to /etc/nn-expected from
`nn-model abi`. Exit status 0 if the guest prints "GUEST-TEST: PASS".

Big requests: model w (WIDE_DIMS) answers batches whose buffers span many
pages; the runner writes their /dev requests (/etc/nn-wide-N.req, rows that
repeat with the prime period WIDE_PATTERNS, so that a misplaced chunk shows)
and the md5 of the expected outputs (W_MD5_N, from `nn-model predict` of each
distinct row). nn-devwrite.c, built here with the host's cc (static), is the
guest's /bin/nn-devwrite: a /dev write whose bytes after the header are not
readable.
"""

import argparse
import hashlib
import os
import random
import struct
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "avocado"))
import nnlib  # noqa: E402
from nnlib import csv  # noqa: E402

TIMEOUT = 600

IN1 = list(range(1, 17))
WX = [-32768, 32767, 0, 0, 1, -1, 100, -100, 32767, 32767, -32768, -32768, 5, 6, 7, -5]
QX = [2147483647, -2147483648, 2147483647, -2147483648, 0, 1, -1, 2147483647,
      2147483647, 2147483647, -2147483648, -2147483648, 100, -100, 32767, -32768]


# The wide model of the big-request checks: a legal batch of WIDE_BATCHES[-1]
# samples needs 1 MiB of inputs and 8 MiB of outputs (max_batch is 4096:
# 64 * 512 multiply-accumulates a sample).
WIDE_DIMS = [64, 512]
WIDE_BATCHES = (40, 4096)
WIDE_PATTERNS = 61


def write_wide(work, model, expected):
    """The big-request checks' files: /dev requests of WIDE_BATCHES samples
    of model (rows repeating with period WIDE_PATTERNS) and, in expected,
    W_MODEL and the md5 of each answer's outputs (little-endian i32, as the
    guest reads them after the 16-byte header), from nn-model predict.
    Returns the --add arguments of the request files."""
    in_dim, out_dim = WIDE_DIMS[0], WIDE_DIMS[-1]
    rng = random.Random(13)
    rows = [[rng.randrange(-(4 << 16), 4 << 16) for _ in range(in_dim)]
            for _ in range(WIDE_PATTERNS)]
    outs = [[int(v) for v in nnlib.reference(model, row).split(",")] for row in rows]
    assert all(len(o) == out_dim for o in outs)
    lines = {"W_MODEL": "x".join(map(str, WIDE_DIMS))}
    adds = []
    for n in WIDE_BATCHES:
        values = [v for r in range(n) for v in rows[r % WIDE_PATTERNS]]
        words = nnlib.dev_request(in_dim, values, num_samples=n)
        path = os.path.join(work, f"wide-{n}.req")
        with open(path, "wb") as f:
            f.write(struct.pack(f"<{len(words)}I", *(w & 0xFFFFFFFF for w in words)))
        adds += ["--add", f"{path}:/etc/nn-wide-{n}.req"]
        answer = [v for r in range(n) for v in outs[r % WIDE_PATTERNS]]
        lines[f"W_MD5_{n}"] = hashlib.md5(struct.pack(f"<{len(answer)}i", *answer)).hexdigest()
    with open(expected, "a") as f:
        for k, v in lines.items():
            f.write(f"{k}='{v}'\n")
    return adds


def build_devwrite(work):
    """tests/guest/nn-devwrite.c as a static binary (the host's cc)."""
    out = os.path.join(work, "nn-devwrite")
    subprocess.run([os.environ.get("CC", "cc"), "-static", "-O2", "-Wall", "-o", out,
                    os.path.join(HERE, "nn-devwrite.c")], check=True)
    return out


def write_expected(path, models):
    """/etc/nn-expected for guest-test.sh: shell variables."""
    a, b, c = models["a"], models["b"], models["c"]
    q1 = [v << 16 for v in IN1]
    c_in = [(i * 7919) % 100000 - 50000 for i in range(8)]
    lines = {
        "MODEL": "x".join(map(str, nnlib.model_dims(a))),
        "IN1": csv(IN1), "OUT1": nnlib.reference(a, IN1, q16=False),
        "IN1_SPACED": "+1, 2 ,3,\t4,5,6,7,8,9,10,11,12,13,14,15,+16",
        "Q1_IN": csv(q1), "Q1_OUT": nnlib.reference(a, q1),
        "QX_IN": csv(QX), "QX_OUT": nnlib.reference(a, QX),
        "WX_IN": csv(WX), "WX_OUT": nnlib.reference(a, WX, q16=False),
        "B_MODEL": "x".join(map(str, nnlib.model_dims(b))), "B_OUT": nnlib.reference(b, q1),
        "C_IN": csv(c_in), "C_OUT": nnlib.reference(c, c_in),
    }
    # The /dev/neural_network ABI from its one source (nn-model abi).
    dev = nnlib.abi()["dev"]
    for kind in ("request", "device_only", "null", "response", "fallback"):
        lines[f"DEV_{kind.upper()}_MAGIC"] = dev[f"{kind}_magic"]["value"]
    for part in ("request", "response"):
        fields = sorted(dev[f"{part}_header"], key=lambda f: f[1])
        lines[f"DEV_{part.upper()}_HEADER"] = " ".join(name for name, _ in fields)
    with open(path, "a") as f:
        for k, v in lines.items():
            f.write(f"{k}='{v}'\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--vq-size", type=int)
    ap.add_argument("--smp", type=int, default=1)
    ap.add_argument("--queues", type=int, default=1)
    ap.add_argument("--bench", default="")
    args = ap.parse_args()

    kernel = os.environ.get("VIRTIO_NN_KERNEL") or nnlib.kernel_paths("plain")[0]
    module_dir = os.environ.get("VIRTIO_NN_MODULE_DIR", os.path.join(nnlib.REPO, "guest-driver"))
    ko = os.path.join(module_dir, "virtio_nn.ko")
    if not os.path.exists(ko):
        sys.exit(f"{ko} missing: build the module first")
    work = tempfile.mkdtemp(prefix="virtio-nn-guest-test.")

    # A private copy of the model (weights/ may change while this runs), and
    # the models to hot-swap in: a wider output, then another input width.
    models = {"a": os.path.join(work, "model-a.safetensors")}
    shutil.copy(nnlib.DEFAULT_MODEL, models["a"])
    for name, dims in (("b", [16, 24, 6]), ("c", [8, 16, 3]), ("w", WIDE_DIMS)):
        models[name] = nnlib.generate_model(os.path.join(work, f"model-{name}.safetensors"),
                                            dims, 5)
    expected = os.path.join(work, "nn-expected")
    with open(expected, "w") as f:
        f.write(f"VQ_SIZE='{args.vq_size or ''}'\nEVENTS='1'\nQUEUES='{args.queues}'\n"
                f"BENCH_ARGS='{args.bench}'\n")
    write_expected(expected, models)
    wide_adds = write_wide(work, models["w"], expected)
    print(open(expected).read(), end="")
    devwrite = build_devwrite(work)

    # Users of the kernel API (guest-driver/consumer), if built.
    extra_kos = []
    for name in ("nn_consumer.ko", "nn_bench.ko"):
        path = os.path.join(module_dir, "consumer", name)
        if os.path.exists(path):
            extra_kos += ["--ko", path]
        else:
            print(f"[runner] {path} missing: its checks are skipped", flush=True)
    initrd = os.path.join(work, "initramfs.cpio.gz")
    subprocess.run([os.path.join(nnlib.REPO, "scripts/build-initramfs.sh"), "--output", initrd,
                    "--no-default-modules", "--ko", ko, *extra_kos,
                    "--add", os.path.join(HERE, "guest-test.sh") + ":/bin/nn-guest-test",
                    "--add", expected + ":/etc/nn-expected",
                    "--add", devwrite + ":/bin/nn-devwrite", *wide_adds], check=True,
                   stdout=subprocess.DEVNULL)

    # sockets in a short directory (sun_path is 108 bytes)
    sockdir = tempfile.mkdtemp(prefix="nn-gt.")
    daemon = nnlib.Daemon(work, models["a"], args.queues, sockdir=sockdir)
    guest = nnlib.Guest(work, daemon, kernel, initrd, smp=args.smp, queues=args.queues,
                        vq_size=args.vq_size, append=os.environ.get("VIRTIO_NN_APPEND", ""),
                        sockdir=sockdir)
    result = None
    try:
        daemon.start()
        guest.start(timeout=300)
        guest.send("sh /bin/nn-guest-test\n")
        result = serve(guest, daemon, models)
    except nnlib.GuestError as e:
        result = f"runner: {e}"
    finally:
        guest.stop()
        daemon.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    print(f"[runner] result: {result}; work dir {work}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if result == "GUEST-TEST: PASS" else 1)


def serve(guest, daemon, models):
    """Prints the guest's output and serves its @@HOST requests until it
    prints its result line; returns that line."""
    stopped = None  # the worker stop-daemon stopped
    while True:
        m, out = guest.wait_for(r"(@@HOST:|GUEST-TEST:)([^\n]*)\n", TIMEOUT)
        print(out, end="", flush=True)
        kind, what = m.group(1), m.group(2).strip()
        print(m.group(0), end="", flush=True)
        if kind == "GUEST-TEST:":
            return kind + " " + what
        if what == "kernel-log":
            # the guest's dmesg follows, up to a marker; judged here, by the
            # harness's one definition of a bad kernel log
            _, log = guest.wait_for(r"@@KERNEL-LOG-END\n", TIMEOUT)
            bad, notes = nnlib.bad_log_lines(log)
            for line in notes + bad:
                print(f"[runner] kernel log: {line}", flush=True)
            guest.send("clean\n" if not bad else f"{len(bad)} bad lines (see above)\n")
            continue
        if what == "stop-daemon":
            # the worker serves the queues (the supervisor only relays
            # vhost-user messages): stopping it makes requests time out
            stopped = daemon.worker_pid()
            os.kill(stopped, signal.SIGSTOP)
        elif what == "cont-daemon":
            os.kill(stopped, signal.SIGCONT)
        elif what == "cont-daemon-in-3s":
            threading.Timer(3, os.kill, (stopped, signal.SIGCONT)).start()
        elif what.startswith("swap-"):
            daemon.load(models[what[5:]])
        elif what == "unplug":
            guest.unplug()
            daemon.stop()
        elif what in ("replug", "replug-b"):
            # replug-b: the restarted daemon serves model b (generation 1
            # again, as every fresh daemon)
            if what == "replug-b":
                daemon.model = models["b"]
            daemon.start()
            guest.replug(daemon.sock)
        print(f"[runner] done: {what}", flush=True)
        guest.send("ok\n")


if __name__ == "__main__":
    main()
