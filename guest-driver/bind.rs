// SPDX-License-Identifier: GPL-2.0

//! The binding layer: the driver's only `unsafe` code.
//!
//! Every raw pointer the kernel hands the driver, every call into C and
//! every manual lifetime (references parked in C structures, RCU-published
//! pointers, pinned `struct pid`s) is turned here into a safe Rust type or
//! function with its contract stated once. The files that hold the driver's
//! logic (`device.rs`, `request.rs`, `procfs.rs`, `api.rs`, ...) use these
//! and contain no `unsafe` of their own.
//!
//! * [`glue`]: declarations of the C glue (`virtio_nn_glue.c`); only this
//!   layer calls them.
//! * [`sys`]: safe wrappers of the glue calls without preconditions (module
//!   parameters, jiffies, rate limits, credentials) and the registrations
//!   the module owns (driver, shrinker, health work, the model copy's fetch
//!   work), undone on drop; the kernel's CRC-32C and `cond_resched`.
//! * [`irq_lock`], [`seqlock`], [`rcu`]: locking primitives the kernel
//!   crate of Linux 6.12 lacks.
//! * [`sync`]: a completion and a wait queue with killable, bounded waits.
//! * [`pid`]: a pinned session `struct pid`.
//! * [`virtio`]: the virtio device, its virtqueues (typed tokens, the
//!   notification after the lock, deletion after a reset and a grace
//!   period) and the `virtio_driver` entry points; [`dma`]: the chunked
//!   buffers a virtqueue lends the device, with their scatterlists.
//! * [`user`]: user-space buffers and file positions of the file entry
//!   points.
//! * [`procfs`], [`sysfs`], [`api`]: the C entry points of `/proc`, sysfs and
//!   the exported kernel API, each turning its raw arguments into safe ones
//!   before calling the driver's logic.

pub(crate) mod api;
pub(crate) mod dma;
pub(crate) mod file;
pub(crate) mod global;
pub(crate) mod glue;
pub(crate) mod irq_lock;
pub(crate) mod kvec;
pub(crate) mod pid;
pub(crate) mod procfs;
pub(crate) mod rcu;
pub(crate) mod seqlock;
pub(crate) mod sync;
pub(crate) mod sys;
pub(crate) mod sysfs;
pub(crate) mod user;
pub(crate) mod virtio;
