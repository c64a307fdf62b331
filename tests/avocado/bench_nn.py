# SPDX-License-Identifier: GPL-2.0
"""End-to-end figures under the guest (scripts/matrix.sh --bench): predictions/s
and latency p50/p99 through /proc/neural_network/predict_q16, through
/dev/neural_network (batch 1 and 256) and through the kernel API (nn_bench.ko,
batch 1 and 256), each beside the null request (the protocol's OP_NULL: the
same round trip without inference; /dev magic NNRN, neural_api_null); the
floor of the guest's shell loop (the same loop against /dev/null);
and the time from the admin `load` to the new generation in sysfs
model_info. Parameters as test_nn.py (default: q1, smp1, auto, default,
plain). Writes data/figures.json, which tests/avocado/report.py prints.

Throughput: wall time of N sequential calls from one guest process, measured
on the host around one console command (the console round trip, ~10 ms, is
in it). p50/p99 of /proc and /dev: the driver's own per-request latency
histogram (/sys/kernel/neural_network/performance, power-of-two µs buckets:
upper bounds), reset by reloading the module before each path. p50/p99 of
the kernel API: nn_bench.ko's per-call figures.
"""

import json
import os
import re
import subprocess
import time

from test_nn import CACHE_P, INFO, KO, PERF, NNTest
import nnlib
from nnlib import csv

N = int(os.environ.get("NN_BENCH_N", "200"))


class Bench(NNTest):

    timeout = 1800

    def _fresh_module(self):
        g = self.guest
        g.out("rmmod virtio_nn")
        g.out(f"insmod {KO} cache_ms=0")
        g.out(f"n=0; while [ $n -lt 100 ] && ! grep -q 'Status: active' {INFO}; do "
              "sleep 0.1; n=$((n+1)); done")

    def _host_frontend_rows(self):
        """The null request beside predict, without a guest: the project's
        host-side vhost-user frontend (tests/src/bin/nn-frontend-bench.rs)
        against the same daemon binary and model, 1 queue, depth 1."""
        tool = os.path.join(nnlib.RELEASE, "nn-frontend-bench")
        if not os.path.exists(tool):
            return [dict(path="host frontend", note="nn-frontend-bench not built")]
        try:
            out = subprocess.run([tool, "--model", self.model_a, "--secs", "1", "--reps", "1"],
                                 capture_output=True, text=True, timeout=600, check=True,
                                 env=dict(os.environ, VIRTIO_NN_DAEMON=nnlib.DAEMON,
                                          NN_CORE_KERNEL=self.kernel_path)).stdout
        except (subprocess.SubprocessError, OSError) as e:
            return [dict(path="host frontend", note=f"nn-frontend-bench failed: {e}")]
        rows = []
        for line in out.splitlines():
            m = re.match(r"\s*1\s+(\d+)\s+(null|predict)\s*\|\s*(\S+)\s+(\S+)\s+(\S+)\s+(\S+)",
                         line)
            if m and m.group(1) in ("1", "256"):
                batch, op, reqs, p50, p99, preds = m.groups()
                rows.append(dict(path=f"host frontend, no guest ({op})", batch=int(batch),
                                 rate=preds if op == "predict" else f"{reqs} req/s",
                                 p50=f"{p50} us", p99=f"{p99} us",
                                 note="nn-frontend-bench, 1 queue, depth 1"))
        return rows

    def _timed(self, cmd, n):
        t0 = time.time()
        self.guest.out(cmd, timeout=1800)
        return n / (time.time() - t0)

    def test_figures(self):
        g = self.guest
        rows = []
        g.out(f"echo 0 >{CACHE_P}")
        # null baseline: the same loop shape, against /dev/null
        g.put_file("/tmp/in", csv(self.q1) + "\n")
        rate = self._timed(f"i=0; exec 3<>/dev/null; while [ $i -lt {N} ]; do cat /tmp/in >&3; "
                           "cat <&3 >/dev/null; i=$((i+1)); done; exec 3<&-", N)
        rows.append(dict(path="shell loop on /dev/null", batch=1, rate=f"{rate:.0f}",
                         note="the loop's own floor under TCG; no device"))
        # /proc predict_q16
        self._fresh_module()
        rate = self._timed(f"i=0; exec 3<>/proc/neural_network/predict_q16; while [ $i -lt {N} ]; "
                           "do cat /tmp/in >&3; cat <&3 >/dev/null; i=$((i+1)); done; exec 3<&-", N)
        perf = g.kv(PERF)
        rows.append(dict(path="/proc predict_q16", batch=1, rate=f"{rate:.0f}",
                         p50=f"<={perf['latency_p50_us']} us", p99=f"<={perf['latency_p99_us']} us",
                         note=f"driver histogram, {perf['requests']} requests"))
        # /dev/neural_network, batch 1 and 256, predictions and null requests
        # The driver always creates /dev/neural_network; its absence is a bug.
        self.require("/dev/neural_network")
        g.put_words("/tmp/sample", self.q1)
        for batch in (1, 256):
            for name, kind in (("predict", "request"), ("null", "null")):
                g.put_words("/tmp/req", nnlib.dev_request(self.in_w, [], num_samples=batch,
                                                          magic=nnlib.dev_magic(kind)))
                g.out(f"i=0; while [ $i -lt {batch} ]; do cat /tmp/sample >>/tmp/req; "
                      "i=$((i+1)); done")
                n = N if batch == 1 else max(10, N // 10)
                self._fresh_module()
                rate = self._timed(f"i=0; exec 3<>/dev/neural_network; while [ $i -lt {n} ]; "
                                   "do dd if=/tmp/req bs=1M >&3 2>/dev/null; "
                                   "dd bs=1M count=1 <&3 >/dev/null 2>&1; i=$((i+1)); done; "
                                   "exec 3<&-", n)
                row = dict(path=f"/dev/neural_network ({name})", batch=batch,
                           rate=f"{rate * batch:.0f}")
                if name == "predict":
                    perf = g.kv(PERF)
                    row.update(p50=f"<={perf['latency_p50_us']} us",
                               p99=f"<={perf['latency_p99_us']} us",
                               note=f"driver histogram, {perf['requests']} requests")
                else:
                    row.update(note="NNRN: same round trip, no inference (not in the "
                                    "driver's histogram)")
                rows.append(row)
        # kernel API (nn_bench.ko)
        # The build always makes nn_bench.ko (scripts/build.sh).
        self.require("/lib/modules/nn_bench.ko")
        self._fresh_module()
        g.out("dmesg -c >/dev/null")
        g.out(f"insmod /lib/modules/nn_bench.ko iterations={N} batch=256 threads=1; "
              "rmmod nn_bench", timeout=1800)
        for line in g.out("dmesg | grep 'nn_bench:'").splitlines():
            m = re.search(r"nn_bench: ([\w-]+): .* x (\d+) samples.*p50 (\d+) us, p99 (\d+) us"
                          r".*?(\d+) predictions/s", line)
            if m:
                rows.append(dict(path=f"kernel API ({m.group(1)})", batch=int(m.group(2)),
                                 rate=m.group(5), p50=f"{m.group(3)} us",
                                 p99=f"{m.group(4)} us", note="nn_bench.ko, per call"))
        # admin load -> generation in sysfs model_info
        lat = []
        for i in range(20):
            t0 = time.time()
            gen = self.daemon.load(self.model_b if i % 2 == 0 else self.model_a)
            g.out(f"while [ \"$(sed -n 's/^Generation: //p' {INFO})\" != {gen} ]; do "
                  "sleep 0.01; done", timeout=60)
            lat.append((time.time() - t0) * 1000)
        lat.sort()
        rows.append(dict(path="admin load -> sysfs generation", batch="-", rate="-",
                         p50=f"{lat[len(lat) // 2]:.0f} ms", p99=f"{lat[-1]:.0f} ms",
                         note="20 swaps, host-timed incl. console poll (10 ms)"))
        rows += self._host_frontend_rows()
        variant = (f"q{self.queues} smp{self.smp} {self.kernel_path} {self.model_kind} "
                   f"{self.kvariant}, N={N}, TCG")
        with open(os.path.join(self.outputdir, "figures.json"), "w") as f:
            json.dump(dict(variant=variant, rows=rows), f, indent=1)
        for r in rows:
            self.log.info("figure: %s", r)
        self.check_log()
