# SPDX-License-Identifier: GPL-2.0
"""virtio-nn end-to-end tests of the daemon's supervisor (backend/SUPERVISOR.md):
the worker process killed (SIGKILL) or replaced (`ctl upgrade`) while the
guest predicts through /proc, /dev/neural_network and the kernel API must be
invisible to the guest: no failed call with the driver's default timeouts,
every answer right, QEMU's connection never closes (a driver re-probe, whose
config-space reads would abort QEMU 11.1 after a close, works).

Same daemon + guest per test and same variants as test_nn.py (NNTest);
scripts/matrix.sh runs this file with test_nn.py on every cell.
"""

import os
import re
import time

import nnlib
from nnlib import csv
from test_nn import CACHE_P, CONS, DEV, INFO, KO, NNTest

LAST_OUTPUT = "/sys/module/nn_consumer/parameters/last_output"
# A worker that dies within 1 s of its start counts as a crash loop (the next
# start backs off, up to 5 s): kills are spaced by more than that.
STABLE_S = 1.2


class Supervisor(NNTest):
    """The worker dies or is upgraded under load; the guest does not notice."""

    KILLS = 10
    UPGRADES = 3

    def setUp(self):
        super().setUp()
        sup = self.daemon.supervisor_status()
        if not sup or sup.get("pid") != self.daemon.proc.pid:
            self.fail(f"the daemon {self.daemon.proc.pid} runs no supervisor: status {sup}")
        self.workers = {self.daemon.worker_pid()}

    def tearDown(self):
        super().tearDown()
        # every worker went with its supervisor (PR_SET_PDEATHSIG)
        left = []
        for pid in getattr(self, "workers", ()):
            try:
                with open(f"/proc/{pid}/cmdline") as f:
                    if "vhost-user-nn" in f.read():
                        left.append(pid)
            except OSError:
                pass
        if left:
            self.error(f"workers left behind after the test: {left}")

    # -- load through the three guest paths --------------------------------------
    def api_values(self):
        """nn_consumer takes up to 64 inputs (the rest are 0): what it sends
        and the host reference of the padded input."""
        vals = self.in1[:64]
        return vals, self.ref(vals + [0] * (self.in_w - len(vals)), q16=False)

    def start_api_load(self, tag="api"):
        """One guest loop calling the kernel API (neural_api_predict through
        nn_consumer.ko, the driver's default timeout: timeout_ms=0) until
        /tmp/stop exists: one line per call in /tmp/<tag>.0.out, "ok ANSWER"
        or "err MESSAGE"."""
        vals, _ = self.api_values()
        loop = (f"while [ ! -e /tmp/stop ]; do "
                f"if insmod {CONS} input={csv(vals)} timeout_ms=0 2>/tmp/{tag}.err; then "
                f"echo ok $(cat {LAST_OUTPUT}); rmmod nn_consumer; "
                f"else echo \"err $(cat /tmp/{tag}.err)\"; sleep 0.1; fi; done")
        self.guest.out(f"sh -c '{loop}' >/tmp/{tag}.0.out 2>&1 &")

    def start_all_load(self):
        """2 processes through /proc (predict_q16), 2 through /dev, 1 through
        the kernel API; no result cache, so every call reaches the device."""
        g = self.guest
        self.require(DEV)
        self.require(CONS)
        g.out(f"echo 0 >{CACHE_P}")
        self.start_load(2)
        self.start_load(2, tag="dload", dev=True)
        self.start_api_load()

    def answers_so_far(self):
        return int(self.guest.out("cat /tmp/load.*.out /tmp/dload.*.out /tmp/api.*.out "
                                  "| wc -l").split()[0])

    def answers_after(self, n, timeout=5):
        """Whether more than n answers are in within timeout seconds."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            time.sleep(0.25)
            if self.answers_so_far() > n:
                return True
        return False

    def stop_all_load(self):
        """Stops the load; returns ({path: answers}, {"path: line": count} of
        every answer that is not the right one)."""
        g = self.guest
        gen = self.daemon.status()["generation"]
        ref = self.ref(self.q1)
        want_dev = [nnlib.dev_magic("response"), 1, self.out_w, gen] + \
            [int(x) for x in ref.split(",")]
        _, ref_api = self.api_values()
        proc = self.stop_load()
        dev = self.load_counts(g, "dload")
        api = self.load_counts(g, "api")
        bad = {f"/proc: {k}": v for k, v in proc.items() if k != f"ok {ref}"}
        for line, n in dev.items():
            words = line.split()
            try:
                ok = words[0] == "ok" and [int(w) for w in words[1:]] == want_dev
            except ValueError:
                ok = False
            if not ok:
                bad[f"/dev: {line}"] = n
        bad.update({f"api: {k}": v for k, v in api.items() if k != f"ok {ref_api}"})
        totals = {"proc": sum(proc.values()), "dev": sum(dev.values()),
                  "api": sum(api.values())}
        return totals, bad

    def check_answers(self, totals, bad, what):
        self.log.info("%s: answers %s, not right: %s", what, totals, bad)
        self.assertEqual(bad, {}, f"failed or wrong calls ({what})")
        for path, n in totals.items():
            self.assertGreater(n, 0, f"no {path} call was answered ({what})")

    # -- after the faults: a re-probe works and answers right ------------------------
    def reprobe_and_check(self):
        """rmmod + insmod of the driver (the probe reads config space: a
        GET_CONFIG round trip to the current worker), model_info, one call
        through each path; QEMU and the supervisor are alive."""
        g = self.guest
        ref = self.ref(self.q1)
        _, ref_api = self.api_values()
        restarts = self.daemon.supervisor_status()["restarts"]
        rc, out = g.run("rmmod virtio_nn", timeout=120)
        self.assertEqual(rc, 0, f"rmmod: {out}")
        try:
            rc, out = g.run(f"insmod {KO} cache_ms=0", timeout=120)
        except nnlib.GuestError as e:
            self.fail(f"insmod (probe: config reads) ended the guest: {e}")
        self.assertTrue(g.alive(), "QEMU died at the probe: " + g.qemu_output())
        self.assertEqual(rc, 0, f"insmod: {out}")
        g.out(f"n=0; while [ $n -lt 300 ] && ! grep -q 'Status: active' {INFO}; "
              "do sleep 0.1; n=$((n+1)); done", timeout=90)
        info = g.kv(INFO)
        self.assertEqual(info.get("Status"), "active", f"model_info after the re-probe: {info}")
        self.assertEqual(int(info["Generation"]), self.daemon.status()["generation"],
                         "model_info's generation vs the daemon's")
        self.assertEqual(self.predict(self.q1), (0, ref), "/proc after the re-probe")
        g.put_words("/tmp/req", nnlib.dev_request(self.in_w, self.q1))
        words = g.out(f"sh -c 'exec 3<>{DEV}; cat /tmp/req >&3; "
                      f"dd bs=1M count=1 2>/dev/null <&3' | od -An -t d4 -v").split()
        self.assertEqual(csv(words[4:]), ref, "/dev after the re-probe")
        vals, _ = self.api_values()
        out = g.out(f"insmod {CONS} input={csv(vals)} && cat {LAST_OUTPUT}; rmmod nn_consumer")
        self.assertEqual(out, ref_api, "kernel API after the re-probe")
        self.assertTrue(g.alive(), "QEMU died: " + g.qemu_output())
        self.assertTrue(self.daemon.alive(), "the supervisor died")
        self.assertEqual(self.daemon.supervisor_status()["restarts"], restarts,
                         "a worker died during the re-probe")

    def takeovers(self):
        """The supervisor's take-over times (us) from the daemon log."""
        with open(self.daemon.logfile, errors="replace") as f:
            return [int(m) for m in re.findall(r"took over (?:after an upgrade )?in (\d+) us",
                                                f.read())]

    # -- the tests --------------------------------------------------------------------
    def held_delay(self):
        """The test-mode delay (ms) a worker holds each request before it
        answers, set on every other worker before it is killed and on every
        worker before it is upgraded (variant parameter inflight_delay_ms,
        0: none): the kill or stop then lands while that worker has taken
        requests it has not answered, which the next worker must answer
        (resuming at the used index). 400 ms: a slow (debug) guest has a
        request inside the worker most of the time, and 5 callers queued
        on one queue wait 2 s at most, under the driver's 5 s timeout."""
        return int(self.params.get("inflight_delay_ms", default=400))

    def test_worker_kill9_under_load(self):
        """SIGKILL the worker 10 times while the guest predicts through /proc,
        /dev and the kernel API (default timeouts), every other time while it
        holds requests (test-mode delay): no failed call, every answer right,
        one restart per kill; then a driver re-probe and a model_info read
        (config-space reads) work and answer right."""
        delay = self.held_delay()
        self.start_all_load()
        time.sleep(1)
        n0 = self.answers_so_far()
        killed, held, t0 = [], 0, time.time()
        for i in range(self.KILLS):
            if delay and i % 2 == 0:
                self.daemon.set_delay(delay)
                held += 1
            # a worker that ran over 1 s: no crash-loop backoff
            time.sleep(STABLE_S + 0.1 * (i % 4))
            pid = self.daemon.kill_worker()
            killed.append(pid)
            self.workers.add(self.daemon.wait_worker(pid))
        kills_s = time.time() - t0
        n1 = self.answers_so_far()
        after = self.answers_after(n1)
        totals, bad = self.stop_all_load()
        sup = self.daemon.supervisor_status()
        took = self.takeovers()
        self.log.info("%d kills (%d holding requests %d ms) in %.1f s (workers %s), "
                      "%d answers during them; supervisor %s; take-over us: %s", len(killed),
                      held, delay, kills_s, sorted(self.workers), n1 - n0, sup, took)
        self.whiteboard = (f"answers={sum(totals.values())} proc={totals['proc']} "
                           f"dev={totals['dev']} api={totals['api']} kills={len(killed)} "
                           f"held={held} restarts={sup['restarts']}")
        self.check_answers(totals, bad, f"{len(killed)} worker kills")
        self.assertGreater(n1, n0, "no answer while the workers were killed")
        self.assertTrue(after, "no answer within 5 s after the last kill")
        self.assertEqual(sup["restarts"], self.KILLS, f"supervisor restarts: {sup}")
        self.assertEqual(len(self.workers), self.KILLS + 1, "a new worker pid per kill")
        self.assertEqual(len(took), self.KILLS, "take-overs in the daemon log")
        self.reprobe_and_check()
        self.check_log()

    def test_upgrade_under_load(self):
        """`ctl upgrade` (the same binary) 3 times under the same load (each
        old worker holding requests): a new worker each time, no
        failed call, every answer right; an upgrade to a
        binary that cannot start (/bin/false, a missing file) is refused with
        the reason while the old worker keeps serving."""
        self.start_all_load()
        time.sleep(1)
        n0 = self.answers_so_far()
        t0 = time.time()
        delay = self.held_delay()
        for i in range(self.UPGRADES):
            old = self.daemon.worker_pid()
            if delay:
                self.daemon.set_delay(delay)
                time.sleep(delay / 1000 + 0.2)
            new = self.daemon.upgrade()
            self.assertNotIn(new, self.workers | {old}, "upgrade: not a new worker")
            self.workers.add(new)
            time.sleep(0.5)  # (no crash-loop rule for upgrades)
        up_s = time.time() - t0
        n1 = self.answers_so_far()
        refused, stalled = {}, []
        missing = os.path.join(self.sockdir, "no-such-vhost-user-nn")
        for binary in ("/bin/false", missing):
            pid = self.daemon.worker_pid()
            with self.assertRaises(nnlib.UpgradeRefused, msg=f"upgrade to {binary}") as cm:
                self.daemon.upgrade(binary)
            refused[binary] = str(cm.exception)
            self.assertEqual(self.daemon.worker_pid(), pid,
                             f"the worker changed after a refused upgrade to {binary}")
            if not self.answers_after(self.answers_so_far()):
                stalled.append(binary)
        totals, bad = self.stop_all_load()
        sup = self.daemon.supervisor_status()
        self.log.info("%d upgrades in %.1f s (workers %s), %d answers during them; refused: %s; "
                      "supervisor %s; take-over us: %s", self.UPGRADES, up_s,
                      sorted(self.workers), n1 - n0, refused, sup, self.takeovers())
        self.whiteboard = (f"answers={sum(totals.values())} proc={totals['proc']} "
                           f"dev={totals['dev']} api={totals['api']} "
                           f"upgrades={self.UPGRADES} held={self.UPGRADES if delay else 0} "
                           f"refused={len(refused)} kills=0")
        self.check_answers(totals, bad, f"{self.UPGRADES} upgrades")
        self.assertGreater(n1, n0, "no answer while the worker was upgraded")
        self.assertEqual(stalled, [], "no answer after these refused upgrades")
        # /bin/false: "worker exited before it was ready (exit status: 1)", or,
        # when it is gone before the supervisor opens its pidfd, only that
        self.assertIn("upgrade refused", refused["/bin/false"])
        self.assertIn("No such file", refused[missing])
        self.assertEqual((sup["upgrades"], sup["restarts"]), (self.UPGRADES, 0),
                         f"supervisor: {sup}")
        self.reprobe_and_check()
        self.check_log()
