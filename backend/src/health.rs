// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The daemon's live health: whether a frontend is connected, and the state
//! of each request queue's worker thread, from what the workers record as
//! they run (no extra thread, no polling).
//!
//! * A frontend is connected from the moment it sets the session's features
//!   (QEMU's first step) until the session ends. Not from the socket's
//!   accept: behind the supervisor the worker's socket is always connected,
//!   to the supervisor, which relays QEMU's messages only while QEMU is there.
//! * A worker is *busy* from the moment it takes an event until it returns
//!   from it, and makes *progress* each time it finishes a request. A worker
//!   busy for [`STUCK_AFTER`] without progress holds work it does not finish:
//!   it is *stuck* (a slow device, `test-delay`, a deadlock). It recovers by
//!   itself when it makes progress again.
//! * A worker whose event handler failed or panicked has *died*: the
//!   vhost-user library ends a worker thread on the first error, so its
//!   queue is not served again on this connection. A new connection starts
//!   new workers and clears the states.
//!
//! [`Health::failing`] feeds the config space's status (`DEVICE_STATUS_ERROR`
//! while a worker is stuck or dead); [`Health::report`] is the admin
//! `health` reply.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

/// A busy worker that finished no request for this long is stuck. (Above
/// any request's normal service time on the default model by orders of
/// magnitude, and above the 3 s `test-delay` the guest timeout tests use,
/// which must read as slow, not stuck.)
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

/// Health of one daemon: a frontend connection and `n` request-queue
/// workers.
#[derive(Debug)]
pub struct Health {
    epoch: Instant,
    stuck_after: Duration,
    connected: AtomicBool,
    workers: Vec<Worker>,
}

#[derive(Debug, Default)]
struct Worker {
    /// Milliseconds since `epoch` (plus one) of the start of the current
    /// event or of the last request finished in it; 0 while idle.
    busy_since: AtomicU64,
    /// Requests finished on this connection.
    finished: AtomicU64,
    /// Why the worker died, if it did.
    died: Mutex<Option<String>>,
}

/// The state of one check of a [`Report`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is checked: `model`, `frontend` or `worker`.
    pub check: &'static str,
    /// The request queue of a `worker` check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue: Option<u32>,
    /// Whether this check passes.
    pub ok: bool,
    /// `loaded`; `connected`/`disconnected`; `idle`/`busy`/`stuck`/`dead`/
    /// `stopped` (a worker without a connection).
    pub state: &'static str,
    /// Why, in words.
    pub reason: String,
}

/// The admin `health` reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Every check passes.
    pub healthy: bool,
    /// The device status the config space shows: `ready` or `error`.
    pub status: &'static str,
    /// Each check with its state and reason.
    pub checks: Vec<Check>,
}

/// What the model check reports (a refused load keeps the old model, so
/// only a daemon started without one has none).
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The model's name (`None`: no model loaded yet).
    pub name: Option<String>,
    /// The generation it is served under.
    pub generation: u32,
}

/// Marks a worker busy until dropped; dropping it while the thread
/// panics records the worker as dead.
pub struct Busy<'a> {
    worker: Option<&'a Worker>,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let Some(w) = self.worker else { return };
        if std::thread::panicking() {
            *w.died.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("its event handler panicked".into());
        }
        w.busy_since.store(0, Ordering::Release);
    }
}

impl Health {
    /// Health of a daemon with `num_workers` request queues (one worker
    /// each), no frontend connected.
    pub fn new(num_workers: u32) -> Self {
        Self::with_stuck_after(num_workers, STUCK_AFTER)
    }

    /// The same with another stuck limit (tests).
    pub fn with_stuck_after(num_workers: u32, stuck_after: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            stuck_after,
            connected: AtomicBool::new(false),
            workers: (0..num_workers).map(|_| Worker::default()).collect(),
        }
    }

    fn now(&self) -> u64 {
        // Plus one: 0 means idle.
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// A new vhost-user session (connection) is about to be served, by new
    /// worker threads: the workers' states start afresh, and no frontend is
    /// connected until it sets the session up.
    pub fn new_session(&self) {
        for w in &self.workers {
            w.busy_since.store(0, Ordering::Release);
            w.finished.store(0, Ordering::Relaxed);
            *w.died.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        self.connected.store(false, Ordering::Release);
    }

    /// A frontend set the session up (its features: see
    /// `VhostUserNnBackend::acked_features`).
    pub fn frontend_connected(&self) {
        self.connected.store(true, Ordering::Release);
    }

    /// The session ended (its worker threads are told to stop).
    pub fn frontend_disconnected(&self) {
        self.connected.store(false, Ordering::Release);
    }

    /// Whether a frontend is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Worker `worker` takes an event; it is busy until the guard drops.
    /// (An index without a worker is ignored: the event handler reports it
    /// as an error.)
    pub fn busy(&self, worker: usize) -> Busy<'_> {
        let w = self.workers.get(worker);
        if let Some(w) = w {
            w.busy_since.store(self.now(), Ordering::Release);
        }
        Busy { worker: w }
    }

    /// Worker `worker` finished a request.
    pub fn progress(&self, worker: usize) {
        if let Some(w) = self.workers.get(worker) {
            w.finished.fetch_add(1, Ordering::Relaxed);
            if w.busy_since.load(Ordering::Acquire) != 0 {
                w.busy_since.store(self.now(), Ordering::Release);
            }
        }
    }

    /// Worker `worker` ended with `why` (its thread stops).
    pub fn died(&self, worker: usize, why: String) {
        if let Some(w) = self.workers.get(worker) {
            *w.died.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        }
    }

    /// The state of worker `i`: (ok, state, reason).
    fn worker_state(&self, i: usize) -> (bool, &'static str, String) {
        let w = &self.workers[i];
        if let Some(why) = w.died.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return (false, "dead", format!("worker thread ended: {why}"));
        }
        if !self.is_connected() {
            return (true, "stopped", "no frontend connected".into());
        }
        let finished = w.finished.load(Ordering::Relaxed);
        let since = w.busy_since.load(Ordering::Acquire);
        if since == 0 {
            return (true, "idle", format!("{finished} requests finished"));
        }
        let busy = Duration::from_millis(self.now().saturating_sub(since));
        if busy >= self.stuck_after {
            return (
                false,
                "stuck",
                format!(
                    "no request finished for {:.1} s while holding work (limit {} s)",
                    busy.as_secs_f64(),
                    self.stuck_after.as_secs_f64()
                ),
            );
        }
        (true, "busy", format!("{finished} requests finished"))
    }

    /// Whether a worker is stuck or dead (the device reports an error).
    pub fn failing(&self) -> bool {
        (0..self.workers.len()).any(|i| !self.worker_state(i).0)
    }

    /// Every check, for the admin `health` command.
    pub fn report(&self, model: &ModelInfo) -> Report {
        let mut checks = vec![
            match &model.name {
                Some(name) => Check {
                    check: "model",
                    queue: None,
                    ok: true,
                    state: "loaded",
                    reason: format!("serving {name:?} as generation {}", model.generation),
                },
                None => Check {
                    check: "model",
                    queue: None,
                    ok: false,
                    state: "none",
                    reason: "no model loaded: requests are refused (admin `load`)".into(),
                },
            },
            if self.is_connected() {
                Check {
                    check: "frontend",
                    queue: None,
                    ok: true,
                    state: "connected",
                    reason: "a vhost-user frontend is connected".into(),
                }
            } else {
                Check {
                    check: "frontend",
                    queue: None,
                    ok: false,
                    state: "disconnected",
                    reason: "no vhost-user frontend connected".into(),
                }
            },
        ];
        for (i, _) in self.workers.iter().enumerate() {
            let (ok, state, reason) = self.worker_state(i);
            checks.push(Check {
                check: "worker",
                queue: Some(i as u32),
                ok,
                state,
                reason,
            });
        }
        let failing = checks.iter().any(|c| c.check == "worker" && !c.ok);
        Report {
            healthy: checks.iter().all(|c| c.ok),
            status: if failing { "error" } else { "ready" },
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ModelInfo {
        ModelInfo {
            name: Some("m".into()),
            generation: 1,
        }
    }

    fn states(h: &Health) -> Vec<(&'static str, &'static str, bool)> {
        h.report(&model())
            .checks
            .into_iter()
            .map(|c| (c.check, c.state, c.ok))
            .collect()
    }

    #[test]
    fn connection_and_worker_states() {
        let h = Health::with_stuck_after(2, Duration::from_millis(50));
        let r = h.report(&model());
        assert!(!r.healthy);
        assert_eq!(r.status, "ready");
        assert_eq!(
            states(&h),
            [
                ("model", "loaded", true),
                ("frontend", "disconnected", false),
                ("worker", "stopped", true),
                ("worker", "stopped", true)
            ]
        );
        h.frontend_connected();
        assert!(h.report(&model()).healthy);
        assert!(!h.failing());
        {
            let _b = h.busy(1);
            assert_eq!(states(&h)[3], ("worker", "busy", true));
            std::thread::sleep(Duration::from_millis(80));
            assert_eq!(states(&h)[3], ("worker", "stuck", false));
            assert!(h.failing());
            let r = h.report(&model());
            assert_eq!((r.healthy, r.status), (false, "error"));
            // Progress un-sticks it.
            h.progress(1);
            assert_eq!(states(&h)[3], ("worker", "busy", true));
        }
        assert_eq!(states(&h)[3], ("worker", "idle", true));
        // An index without a worker changes nothing.
        drop(h.busy(7));
        h.progress(7);
        h.died(7, "x".into());
        assert!(h.report(&model()).healthy);
    }

    #[test]
    fn a_dead_worker_fails_until_the_next_connection() {
        let h = Health::new(2);
        h.new_session();
        h.frontend_connected();
        h.died(0, "boom".into());
        let r = h.report(&model());
        assert_eq!((r.healthy, r.status), (false, "error"));
        assert_eq!(r.checks[2].state, "dead");
        assert!(r.checks[2].reason.contains("boom"), "{:?}", r.checks[2]);
        // Still dead after the frontend went, until a new session.
        h.frontend_disconnected();
        assert_eq!(states(&h)[2], ("worker", "dead", false));
        h.new_session();
        assert_eq!(states(&h)[2], ("worker", "stopped", true));
        h.frontend_connected();
        assert!(h.report(&model()).healthy);

        // A panic while busy is a death too.
        let h = std::sync::Arc::new(Health::new(1));
        h.frontend_connected();
        let h2 = h.clone();
        let r = std::thread::spawn(move || {
            let _b = h2.busy(0);
            panic!("handler bug");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(states(&h)[2], ("worker", "dead", false));
    }
}
