// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user side: [`VhostUserBackend`] for the device, the queue loop
//! that feeds descriptor chains to [`NnDevice::process_chain`], and the event
//! queue that tells the driver about model changes.
//!
//! Queues `0..n` are request queues, one worker thread each; queue `n` is the
//! event queue, served by a thread of its own (thread `n`) together with the
//! device's change eventfd, so that an announcement never waits for a
//! request.
//!
//! Invariants of the request-queue loop, which a hostile guest relies on
//! being kept:
//! - chains are taken one at a time and answered in the order taken (the
//!   supervisor's restart relies on it, see SUPERVISOR.md);
//! - a pass serves at most [`PASS_CHAINS`] chains or [`PASS_TIME`], then
//!   re-arms the queue by signalling its own kick eventfd and returns to the
//!   event loop, which is where a worker sees its exit event;
//! - between chains, and between blocks of samples inside one request, the
//!   worker checks for the connection's end and for its ring being stopped
//!   (not ready, not enabled, or GET_VRING_BASE since the chain was taken);
//! - a chain taken before GET_VRING_BASE is never returned after it: each
//!   chain carries its ring's epoch, `stop_vring` bumps the epoch (after the
//!   library marked the ring not ready), and `add_used` happens under the
//!   vring's lock only if the ring is ready and the epoch unchanged.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::error;
use nn_core::protocol::{self, Event};
use thiserror::Error as ThisError;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::device::{Buffers, GuestMemory, NnDevice};
use crate::evfd;
use crate::ratelimit::warn_limited as warn;
use crate::stats::Stats;

/// Largest virtqueue size offered to the driver.
pub const QUEUE_SIZE: usize = 1024;

/// Most chains one pass over a request queue serves.
pub const PASS_CHAINS: usize = 64;

/// Most time one pass over a request queue takes (a chain started before
/// it runs out is finished: one request is bounded by
/// `protocol::MAX_REQUEST_MACS`).
pub const PASS_TIME: Duration = Duration::from_millis(2);

/// Longest `--poll-us`: a worker polls at most this long after a pass.
pub const MAX_POLL: Duration = Duration::from_millis(100);

/// Errors of the vhost-user layer.
#[derive(Debug, ThisError)]
pub enum Error {
    /// An event that is none of the worker thread's queues or listeners.
    #[error("event {event} is not one of worker thread {thread}'s queues")]
    UnknownEvent {
        /// The device event (local to the thread).
        event: u16,
        /// The worker thread.
        thread: usize,
    },
    /// An event that is not a plain read-ready notification.
    #[error("unexpected epoll events {0:?}")]
    UnexpectedEvents(EventSet),
    /// Creating the exit event failed.
    #[error("creating exit event: {0}")]
    ExitEvent(io::Error),
    /// Signalling the guest failed.
    #[error("signalling used queue: {0}")]
    Signal(io::Error),
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::other(e)
    }
}

/// The backend of one vhost-user connection. Each request queue has its own
/// worker thread (and its own buffers), so queues never wait for each other.
pub struct VhostUserNnBackend {
    device: Arc<NnDevice>,
    stats: Arc<Stats>,
    num_queues: usize,
    mem: Mutex<Option<GuestMemoryAtomic<GuestMemory>>>,
    event_idx: Mutex<bool>,
    buffers: Vec<Mutex<Buffers>>,
    /// Generation last announced on the event queue.
    announced: Mutex<u32>,
    /// Device status last announced (or seen at connection) on the event
    /// queue: a change of status alone is announced too.
    announced_status: AtomicU32,
    /// Per vring: bumped at each GET_VRING_BASE (see the module's invariants).
    epochs: Vec<AtomicU64>,
    /// After a pass, poll the avail ring this long before sleeping.
    poll: Duration,
    /// The session ended (also seen through the exit eventfd, which the
    /// library signals before joining the workers).
    exiting: AtomicBool,
    exit: (EventConsumer, EventNotifier),
}

/// How a pass over a request queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    /// No chain is left.
    Drained,
    /// The budget ran out; the queue is re-armed.
    Budget,
    /// The ring is stopped or unusable, or the session ends.
    Stop,
}

impl VhostUserNnBackend {
    /// A backend for `device` with `num_queues` request queues.
    pub fn new(device: Arc<NnDevice>, stats: Arc<Stats>, num_queues: usize) -> Result<Self, Error> {
        let exit =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(Error::ExitEvent)?;
        // One backend per session, served by new worker threads.
        device.health().new_session();
        Ok(Self {
            stats,
            num_queues,
            mem: Mutex::new(None),
            event_idx: Mutex::new(false),
            buffers: (0..num_queues).map(|_| Mutex::default()).collect(),
            announced: Mutex::new(device.current().generation),
            announced_status: AtomicU32::new(device.status()),
            epochs: (0..=num_queues).map(|_| AtomicU64::new(0)).collect(),
            poll: Duration::ZERO,
            exiting: AtomicBool::new(false),
            device,
            exit,
        })
    }

    /// Polls each request queue for up to `poll` after a pass before going
    /// back to its eventfd (at most [`MAX_POLL`]).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll.min(MAX_POLL);
        self
    }

    /// Whether the session is ending.
    fn stopping(&self) -> bool {
        self.exiting.load(Ordering::Relaxed) || evfd::is_readable(&self.exit.0)
    }

    /// Makes the first event buffer the driver posts carry the current
    /// generation even if it did not change: a worker taking over cannot
    /// know whether its predecessor announced it.
    pub fn announce_current(&self) {
        *self.announced.lock().unwrap_or_else(|e| e.into_inner()) = 0;
    }

    /// The `--print-capabilities` JSON of the vhost-user spec. There is no
    /// backend type for this device in the spec; "virtio-nn" names it.
    pub fn capabilities() -> String {
        r#"{"type":"virtio-nn","features":[]}"#.to_string()
    }

    /// Index of the event queue (after the request queues).
    fn event_queue(&self) -> u16 {
        self.num_queues as u16
    }

    /// The epoll id of the device's change eventfd (ids up to the number of
    /// queues are the library's).
    fn change_event_id(&self) -> u16 {
        self.num_queues as u16 + 2
    }

    /// The worker thread of the event queue.
    fn event_thread(&self) -> usize {
        self.num_queues
    }

    /// Makes the event queue's thread wake up on model changes. Call once
    /// per daemon.
    pub fn register_change_listener(
        &self,
        daemon: &VhostUserDaemon<Arc<VhostUserNnBackend>>,
    ) -> io::Result<()> {
        let handlers = daemon.get_epoll_handlers();
        let handler = handlers
            .get(self.event_thread())
            .ok_or_else(|| io::Error::other("the daemon has no event-queue thread"))?;
        handler.register_listener(
            self.device.changed().as_raw_fd(),
            EventSet::IN,
            u64::from(self.change_event_id()),
        )
    }

    /// Announces the current generation and status on the event queue if
    /// either changed since the last announcement and the driver has posted
    /// a buffer; otherwise the change stays pending until the next buffer
    /// arrives. (A worker's death wakes thread 0 through the change eventfd;
    /// becoming stuck is not announced, it only shows in config space.)
    fn announce(&self, vring: &VringRwLock) -> Result<(), Error> {
        let r = self.announce_once(vring);
        // Invariant: with EVENT_IDX the driver kicks only when avail->idx
        // passes the avail_event the device publishes, so every pass over the
        // event queue publishes it again, as the request queues' loop does;
        // otherwise no buffer posted after the first would kick, and a
        // pending change would wait for the next model change. Only on a
        // ready queue: an unconfigured one would have it written near GPA 0.
        if *self.event_idx.lock().unwrap_or_else(|e| e.into_inner())
            && vring.get_ref().get_queue().ready()
        {
            if let Err(e) = vring.enable_notification() {
                warn!("event queue enable_notification: {e}");
            }
        }
        r
    }

    /// A snapshot of guest memory (`None` before the memory table is set).
    fn memory(&self) -> Option<crate::device::GuestMemoryRef> {
        let mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        mem.as_ref().map(GuestAddressSpace::memory)
    }

    fn announce_once(&self, vring: &VringRwLock) -> Result<(), Error> {
        let Some(mem) = self.memory() else {
            return Ok(());
        };
        let cfg = self.device.config();
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if *announced == cfg.generation
            && self.announced_status.load(Ordering::Relaxed) == cfg.status
        {
            return Ok(());
        }
        let (chain, epoch) = {
            let mut state = vring.get_mut();
            // A disabled or stopped event queue is not written (QEMU may
            // have stopped it); the change waits for the next buffer.
            if !state.is_enabled() || !state.get_queue().ready() {
                return Ok(());
            }
            let epoch = self.epochs[usize::from(self.event_queue())].load(Ordering::Acquire);
            let Some(chain) = state.get_queue_mut().pop_descriptor_chain(mem.clone()) else {
                return Ok(());
            };
            (chain, epoch)
        };
        let head = chain.head_index();
        let event = Event {
            kind: protocol::EVENT_CONFIG_CHANGED,
            generation: cfg.generation,
            status: cfg.status,
            reserved: 0,
        };
        let written = match chain.writer(&mem) {
            Ok(mut w) if w.available_bytes() >= Event::SIZE => {
                w.write_all(&event.to_bytes()).is_ok()
            }
            _ => false,
        };
        if written {
            *announced = cfg.generation;
            self.announced_status.store(cfg.status, Ordering::Relaxed);
        } else {
            // The buffer is returned empty; the event waits for a good one.
            warn!("event buffer {head} cannot hold an event");
        }
        let len = if written { Event::SIZE as u32 } else { 0 };
        if !self.return_used(vring, usize::from(self.event_queue()), epoch, head, len) {
            return Ok(());
        }
        match vring.needs_notification() {
            Ok(false) => Ok(()),
            Ok(true) | Err(_) => vring.signal_used_queue().map_err(Error::Signal),
        }
    }

    /// The session ended: asks the worker threads to stop (health shows
    /// the frontend gone at once, even while a worker still finishes a
    /// request).
    pub fn notify_exit(&self) {
        self.exiting.store(true, Ordering::Relaxed);
        self.device.health().frontend_disconnected();
        if let Err(e) = self.exit.1.notify() {
            error!("cannot signal the worker threads to exit: {e}");
        }
    }

    /// Returns a served chain to the guest if its ring is still the one it
    /// was taken from: ready, and no GET_VRING_BASE since (`epoch`). The
    /// check and the write happen under the vring's lock, which the library
    /// holds to mark the ring not ready. Returns whether it was returned.
    fn return_used(
        &self,
        vring: &VringRwLock,
        index: usize,
        epoch: u64,
        head: u16,
        len: u32,
    ) -> bool {
        let mut state = vring.get_mut();
        if !state.get_queue().ready() || self.epochs[index].load(Ordering::Acquire) != epoch {
            warn!("chain {head} answered after its ring stopped: dropped");
            return false;
        }
        if let Err(e) = state.add_used(head, len) {
            warn!("cannot return descriptor {head}: {e}");
        }
        true
    }

    /// Serves the chains of request queue `queue` one at a time, within a
    /// pass's budget, then signals the guest if the driver wants it.
    fn process_queue(&self, queue: u16, vring: &VringRwLock) -> Result<Pass, Error> {
        let Some(mem) = self.memory() else {
            warn!("queue kicked before the memory table was set");
            return Ok(Pass::Stop);
        };
        let q = usize::from(queue);
        let mut buf = self.buffers[q].lock().unwrap_or_else(|e| e.into_inner());
        let start = Instant::now();
        let mut served = 0;
        let pass = loop {
            if self.stopping() {
                break Pass::Stop;
            }
            if served >= PASS_CHAINS || start.elapsed() >= PASS_TIME {
                break Pass::Budget;
            }
            let (chain, epoch, max_descs) = {
                let mut state = vring.get_mut();
                if !state.is_enabled() || !state.get_queue().ready() {
                    break Pass::Stop;
                }
                let epoch = self.epochs[q].load(Ordering::Acquire);
                let max_descs = usize::from(state.get_queue().size());
                let next = match state.get_queue_mut().iter(mem.clone()) {
                    Ok(mut it) => it.next(),
                    Err(e) => {
                        // A broken avail ring: nothing can be served until
                        // the driver resets it.
                        warn!("cannot read the available ring: {e}");
                        break Pass::Stop;
                    }
                };
                match next {
                    Some(chain) => (chain, epoch, max_descs),
                    None => break Pass::Drained,
                }
            };
            let head = chain.head_index();
            let begun = Instant::now();
            let in_flight = self.stats.in_flight(queue);
            let stop = || self.stopping() || self.epochs[q].load(Ordering::Acquire) != epoch;
            let outcome = match self
                .device
                .process_chain_until(chain, &mem, &mut buf, max_descs, &stop)
            {
                Ok(outcome) => outcome,
                Err(_stopped) => break Pass::Stop,
            };
            self.stats
                .record(queue, outcome.status, outcome.samples, begun.elapsed());
            drop(in_flight);
            self.device.health().progress(q);
            served += 1;
            if !self.return_used(vring, q, epoch, head, outcome.used_len) {
                break Pass::Stop;
            }
        };
        if served > 0 {
            match vring.needs_notification() {
                Ok(false) => {}
                Ok(true) | Err(_) => vring.signal_used_queue().map_err(Error::Signal)?,
            }
        }
        if pass == Pass::Budget {
            // Back to the event loop, and here again at once.
            let state = vring.get_ref();
            if let Some(kick) = state.get_kick() {
                if let Err(e) = evfd::signal(kick) {
                    warn!("cannot re-arm queue {queue}: {e}");
                }
            }
        }
        Ok(pass)
    }

    /// Polls request queue `queue` for a new chain for up to the `--poll-us`
    /// time; returns whether one arrived (notifications stay suppressed
    /// while polling).
    fn poll_queue(&self, vring: &VringRwLock) -> bool {
        let Some(mem) = self.memory() else {
            return false;
        };
        let deadline = Instant::now() + self.poll;
        let mut spins = 0u32;
        loop {
            {
                let state = vring.get_ref();
                let queue = state.get_queue();
                if !queue.ready() {
                    return false;
                }
                match queue.avail_idx(&*mem, Ordering::Acquire) {
                    Ok(idx) if idx.0 != queue.next_avail() => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
            spins = spins.wrapping_add(1);
            // The exit check is a system call: every 64 spins.
            if spins.is_multiple_of(64) && (self.stopping() || Instant::now() >= deadline) {
                return false;
            }
            std::hint::spin_loop();
        }
    }
}

impl VhostUserBackend for VhostUserNnBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.num_queues + 1
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One thread per request queue, then one for the event queue.
        (0..=self.num_queues).map(|q| 1u64 << q).collect()
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn acked_features(&self, _features: u64) {
        // A frontend is connected once it sets the session's features (the
        // first thing QEMU does). Not at accept: behind the supervisor the
        // worker's socket is always connected, to the supervisor, which
        // relays QEMU's messages only while QEMU is connected.
        self.device.health().frontend_connected();
    }

    fn set_event_idx(&self, enabled: bool) {
        *self.event_idx.lock().unwrap_or_else(|e| e.into_inner()) = enabled;
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.device.read_config(offset, size)
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // The library marked the ring not ready before this call; a chain
        // taken before it is now never returned (see `return_used`).
        if let Some(epoch) = self.epochs.get(queue_index as usize) {
            epoch.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemory>) -> io::Result<()> {
        *self.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let consumer = self.exit.0.try_clone().ok()?;
        let notifier = self.exit.1.try_clone().ok()?;
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        // The worker is busy (see `health`) until this returns; an error
        // ends its thread in the library, so it is recorded as its death.
        let _busy = self.device.health().busy(thread_id);
        let r = self.serve_event(device_event, evset, vrings, thread_id);
        if let Err(e) = &r {
            self.device.worker_died(thread_id, e.to_string());
        }
        r
    }
}

impl VhostUserNnBackend {
    /// [`VhostUserBackend::handle_event`] without the health bookkeeping.
    fn serve_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(Error::UnexpectedEvents(evset).into());
        }
        // Invariant: `vrings` and `device_event` are the worker thread's,
        // not the device's (see `queues_per_thread`): thread t < n holds
        // request queue t at local index 0, thread n the event queue at
        // local index 0, and the change eventfd is registered on thread n
        // only. So a request event's device queue is the thread id, and
        // every per-queue resource (buffers, stats) is indexed by it, never
        // by `device_event`. Any other (event, thread) pair, or vrings
        // lacking the local index, is an error and never an index panic
        // (which would kill the worker). Tested in vhu_nn/tests.rs.
        let unknown = || Error::UnknownEvent {
            event: device_event,
            thread: thread_id,
        };
        if thread_id == self.event_thread() {
            if device_event == self.change_event_id() {
                // Reset the eventfd counter; the generation itself is read
                // from the device.
                let _ = self.device.changed().read();
            } else if device_event != 0 {
                return Err(unknown().into());
            }
            let vring = vrings.first().ok_or_else(unknown)?;
            return Ok(self.announce(vring)?);
        }
        let queue = u16::try_from(thread_id)
            .ok()
            .filter(|&q| device_event == 0 && q < self.event_queue())
            .ok_or_else(unknown)?;
        let vring = vrings.first().ok_or_else(unknown)?;
        // Notifications stay off while chains are served (and while
        // polling); when they are turned back on, a chain that arrived
        // meanwhile is served at once rather than waiting for a kick.
        loop {
            if let Err(e) = vring.disable_notification() {
                warn!("disable_notification: {e}");
            }
            match self.process_queue(queue, vring)? {
                Pass::Drained => {}
                Pass::Budget => break,
                Pass::Stop => {
                    // A ring that is still ready (a broken avail ring, or
                    // the session ending) gets its notifications back, so
                    // a driver that fixes it is heard.
                    if vring.get_ref().get_queue().ready() {
                        let _ = vring.enable_notification();
                    }
                    break;
                }
            }
            if !self.poll.is_zero() && self.poll_queue(vring) {
                continue;
            }
            // Invariant: the loop ends when a pass cannot read the avail
            // ring (Pass::Stop). With an avail idx more than the queue size
            // ahead, iter() fails while enable_notification() keeps
            // reporting new buffers; looping on that would spin and the
            // worker would never see its exit event.
            match vring.enable_notification() {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    warn!("enable_notification: {e}");
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
