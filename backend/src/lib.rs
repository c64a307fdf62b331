// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user-nn: the vhost-user daemon of the virtio-nn device.
//!
//! * [`device`]: the device logic — served model and hot-swap, config space,
//!   and one descriptor chain in, one response out.
//! * [`chain`]: one descriptor chain walked once into segments.
//! * [`vhu_nn`]: the `VhostUserBackend` implementation and the queue loop
//!   (one worker thread per request queue, one for the event queue).
//! * [`admin`]: the admin socket (line-delimited JSON: status, health, stats,
//!   metrics, load).
//! * [`http`]: `--http`, the read-only HTTP endpoint (metrics, health
//!   probes, model metadata).
//! * [`stats`]: request counters and latency histograms (Prometheus).
//! * [`health`]: frontend connection and worker states (admin `health`,
//!   the config space's status).
//! * [`sandbox`]: seccomp filters, Landlock, `--user`.
//! * [`watch`]: `--watch`, reloading the model when its file changes.
//!
//! The binary (`main.rs`) holds the command line and the serve loop.

pub mod admin;
pub mod chain;
pub mod control;
pub mod device;
mod evfd;
pub mod health;
pub mod http;
mod ratelimit;
pub mod sandbox;
pub mod stats;
pub mod supervisor;
#[cfg(any(test, feature = "test-utils"))]
#[doc(hidden)]
pub mod testing;
pub mod vhu_nn;
pub mod watch;
