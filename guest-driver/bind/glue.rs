// SPDX-License-Identifier: GPL-2.0

//! Declarations of the C glue in `virtio_nn_glue.c`.
//!
//! These are the static tables and the wrappers around static inline kernel
//! functions that Rust cannot call directly. Keep the prototypes in sync with
//! the C file.

use core::ffi::c_void;
use kernel::bindings;
use kernel::ffi::{c_int, c_long, c_uint, c_ulong};

// The kernel structs contain zero-sized members (e.g. when lockdep is off),
// which the lint flags although only pointers to them cross the boundary,
// as in the `bindings` crate.
#[allow(improper_ctypes)]
extern "C" {
    /// The `proc_ops` of `/proc/neural_network/{predict,predict_q16}`.
    pub(crate) static virtio_nn_proc_ops: bindings::proc_ops;

    /// The prediction timeout (module parameter `timeout_ms`), 0 for no
    /// limit.
    pub(crate) fn virtio_nn_timeout_ms() -> c_uint;

    /// `jiffies + msecs_to_jiffies(ms)`.
    pub(crate) fn virtio_nn_jiffies_after_ms(ms: c_uint) -> c_ulong;

    /// Jiffies left until `end`, 0 once it has passed.
    pub(crate) fn virtio_nn_jiffies_until(end: c_ulong) -> c_long;

    /// `raw_smp_processor_id()`.
    pub(crate) fn virtio_nn_cpu() -> c_uint;

    /// `register_virtio_driver()` of the static driver.
    pub(crate) fn virtio_nn_register_driver() -> c_int;

    /// `unregister_virtio_driver()` of the static driver.
    pub(crate) fn virtio_nn_unregister_driver();

    /// `virtio_cread32()`: one config-space read (a host round trip).
    pub(crate) fn virtio_nn_cread32(vdev: *mut bindings::virtio_device, offset: c_uint) -> u32;

    /// `virtio_has_feature()`.
    pub(crate) fn virtio_nn_has_feature(vdev: *const bindings::virtio_device, fbit: c_uint)
        -> bool;

    /// `virtio_find_vqs()` without interrupt affinity.
    pub(crate) fn virtio_nn_find_vqs(
        vdev: *mut bindings::virtio_device,
        nvqs: c_uint,
        vqs: *mut *mut bindings::virtqueue,
        vqs_info: *mut bindings::virtqueue_info,
    ) -> c_int;

    /// `virtio_device_ready()`.
    pub(crate) fn virtio_nn_device_ready(vdev: *mut bindings::virtio_device);

    /// `vdev->config->del_vqs(vdev)`.
    pub(crate) fn virtio_nn_del_vqs(vdev: *mut bindings::virtio_device);

    /// `init_completion()`.
    pub(crate) fn virtio_nn_init_completion(x: *mut bindings::completion);

    /// `spin_lock_irqsave()`; returns the flags.
    pub(crate) fn virtio_nn_spin_lock_irqsave(lock: *mut bindings::spinlock_t) -> c_ulong;

    /// `spin_unlock_irqrestore()`.
    pub(crate) fn virtio_nn_spin_unlock_irqrestore(lock: *mut bindings::spinlock_t, flags: c_ulong);

    /// `seqlock_init()`.
    pub(crate) fn virtio_nn_seqlock_init(sl: *mut bindings::seqlock_t);

    /// `write_seqlock()`: takes the lock, disables preemption, makes the
    /// sequence odd.
    pub(crate) fn virtio_nn_write_seqlock(sl: *mut bindings::seqlock_t);

    /// `write_sequnlock()`.
    pub(crate) fn virtio_nn_write_sequnlock(sl: *mut bindings::seqlock_t);

    /// `read_seqbegin()`: waits while a write is in progress.
    pub(crate) fn virtio_nn_read_seqbegin(sl: *const bindings::seqlock_t) -> c_uint;

    /// `read_seqretry()`: whether a write happened since `start`.
    pub(crate) fn virtio_nn_read_seqretry(sl: *const bindings::seqlock_t, start: c_uint) -> bool;

    /// `init_waitqueue_head()`.
    pub(crate) fn virtio_nn_init_waitqueue_head(wq: *mut bindings::wait_queue_head);

    /// `wake_up_all()`.
    pub(crate) fn virtio_nn_wake_up_all(wq: *mut bindings::wait_queue_head);

    /// `wait_event_killable_timeout(*wq, READ_ONCE(*seq) != seen, timeout)`:
    /// positive once `*seq` differs from `seen`, 0 on timeout,
    /// `-ERESTARTSYS` on a fatal signal.
    pub(crate) fn virtio_nn_wait_seq_killable(
        wq: *mut bindings::wait_queue_head,
        seq: *const u32,
        seen: u32,
        timeout: c_long,
    ) -> c_long;

    /// `__ratelimit()` of the driver's one rate limit for messages a
    /// request can cause: whether to print.
    pub(crate) fn virtio_nn_ratelimit() -> bool;

    /// `rcu_read_lock()`.
    pub(crate) fn virtio_nn_rcu_read_lock();

    /// `rcu_read_unlock()`.
    pub(crate) fn virtio_nn_rcu_read_unlock();

    /// `get_pid(task_session(current))` under RCU: the caller's session,
    /// pinned (put it with `put_pid`).
    pub(crate) fn virtio_nn_get_session() -> *mut bindings::pid;

    /// `pid_has_task(pid, PIDTYPE_SID)` under RCU: whether a task is still in
    /// the session `pid` (a pinned `struct pid`).
    pub(crate) fn virtio_nn_session_alive(pid: *mut bindings::pid) -> bool;

    /// `current_euid()` as its kernel-internal value.
    pub(crate) fn virtio_nn_current_euid() -> u32;

    /// `pde_data()`: the data pointer of a proc entry.
    pub(crate) fn virtio_nn_pde_data(inode: *const bindings::inode) -> *mut c_void;

    /// Initialises the health check's delayed work and schedules its first
    /// run after `health_interval_ms` (unless 0).
    pub(crate) fn virtio_nn_health_start();

    /// The module parameter `cache_ms`.
    pub(crate) fn virtio_nn_cache_ms() -> c_uint;

    /// The module parameter `cache_fallback_ms` (0: no fallback).
    pub(crate) fn virtio_nn_cache_fallback_ms() -> c_uint;

    /// The module parameter `max_orphans` (0: no limit).
    pub(crate) fn virtio_nn_max_orphans() -> c_uint;

    /// The module parameter `max_request_kib` (0: the protocol's largest
    /// request).
    pub(crate) fn virtio_nn_max_request_kib() -> c_uint;

    /// `KMALLOC_MAX_SIZE`: the largest `kmalloc()`.
    pub(crate) fn virtio_nn_kmalloc_max_size() -> usize;

    /// `sg_set_buf()`: points scatterlist entry `sg` at the `len` bytes at
    /// `buf` (in the linear map).
    pub(crate) fn virtio_nn_sg_set_buf(
        sg: *mut bindings::scatterlist,
        buf: *const c_void,
        len: c_uint,
    );

    /// Allocates and registers the result cache's shrinker.
    pub(crate) fn virtio_nn_shrinker_register() -> c_int;

    /// `shrinker_free()` of the result cache's shrinker.
    pub(crate) fn virtio_nn_shrinker_unregister();

    /// `misc_register()` of `/dev/neural_network`.
    pub(crate) fn virtio_nn_misc_register() -> c_int;

    /// `misc_deregister()` of `/dev/neural_network`.
    pub(crate) fn virtio_nn_misc_deregister();

    /// Whether the caller may open `/dev/neural_network` (module parameter
    /// `dev_gid`: membership of the group, or `CAP_DAC_OVERRIDE`).
    pub(crate) fn virtio_nn_dev_allowed() -> bool;

    /// `cancel_delayed_work_sync()` of the health check.
    pub(crate) fn virtio_nn_health_stop();

    /// `sysfs_create_group()` of the static attributes (`model_info`,
    /// `performance`, `health`).
    pub(crate) fn virtio_nn_sysfs_create_file(kobj: *mut bindings::kobject) -> c_int;

    /// `sysfs_remove_group()` of the static attributes.
    pub(crate) fn virtio_nn_sysfs_remove_file(kobj: *mut bindings::kobject);

    /// Queues the model copy's fetch work (any context; a no-op before
    /// `virtio_nn_fetch_start` and after `virtio_nn_fetch_stop`).
    pub(crate) fn virtio_nn_fetch_schedule();

    /// Initialises the fetch work; schedules are honoured from now on.
    pub(crate) fn virtio_nn_fetch_start();

    /// `disable_work_sync()` of the fetch work: waits for a running fetch.
    pub(crate) fn virtio_nn_fetch_stop();

    /// The module parameter `fallback_max_bytes` (0: no fallback).
    pub(crate) fn virtio_nn_fallback_max_bytes() -> c_uint;

    /// The standard CRC-32C of `len` bytes at `buf`.
    pub(crate) fn virtio_nn_crc32c(buf: *const u8, len: usize) -> u32;

    /// `cond_resched()`.
    pub(crate) fn virtio_nn_cond_resched();
}
