#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0
"""The demo (run by scripts/demo.sh, which builds everything first): starts
the daemon with a model, boots a guest with the driver, runs the original
design's `echo ... > /proc/neural_network/predict; cat
/proc/neural_network/predict` in it (and the same through predict_q16), and
prints the guest's answers next to the host reference (`nn-model predict`,
nn-core's scalar reference). Exit status 0 when they match bit for bit.

It uses the harness of the guest tests (nnlib: daemon, QEMU over QMP and the
serial console), so run it with the Python of scripts/setup-avocado.sh (it
needs qemu.qmp).

Usage: tests/avocado/demo.py --kernel BZIMAGE --initrd INITRAMFS [MODEL]
(MODEL defaults to weights/default.safetensors; the initramfs must load
virtio_nn.ko at boot, as scripts/build.sh's does.)
"""

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nnlib  # noqa: E402
from nnlib import csv  # noqa: E402

P = "/proc/neural_network/predict"
Q = "/proc/neural_network/predict_q16"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("model", nargs="?", default=nnlib.DEFAULT_MODEL)
    args = ap.parse_args()
    model = args.model
    dims = nnlib.model_dims(model)
    values = list(range(1, dims[0] + 1))
    q16_values = [v << 16 for v in values]

    print(f"model:  {model} ({dims})")
    # sockets in a short directory (sun_path is 108 bytes)
    work = tempfile.mkdtemp(prefix="virtio-nn-demo.")
    daemon = guest = None
    ok = False
    try:
        daemon = nnlib.Daemon(work, model).start()
        print(f"daemon: listening on {daemon.sock}")
        guest = nnlib.Guest(work, daemon, args.kernel, args.initrd)
        guest.start()
        guest.out("grep -q '^virtio_nn ' /proc/modules")
        print("guest:  booted, virtio_nn loaded\n")

        answers = []
        for f, vals in ((P, values), (Q, q16_values)):
            cmd = f"echo {csv(vals)} > {f}; cat {f}"
            print(f"guest # {cmd}", flush=True)
            out = guest.out(cmd)
            print(out)
            answers.append(out)
        hosts = [nnlib.reference(model, values, q16=False), nnlib.reference(model, q16_values)]

        print()
        print(f"                 {'guest (/proc, via the device)':<40} host (nn-core reference)")
        print(f"whole numbers:   {answers[0]:<40} {hosts[0]}")
        print(f"Q16.16 raw:      {answers[1]:<40} {hosts[1]}")
        ok = answers == hosts
        print("\n" + ("MATCH: bit for bit" if ok else "MISMATCH"))
    except Exception as e:  # noqa: BLE001 - report it, then clean up
        print(f"demo: {e}", file=sys.stderr)
        for what, log in (("daemon", daemon and daemon.logfile),
                          ("QEMU", guest and guest.qemulog)):
            if log and os.path.exists(log):
                print(f"--- {what} log ---\n{open(log, errors='replace').read()[-2000:]}",
                      file=sys.stderr)
    finally:
        if guest is not None:
            guest.stop()
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
