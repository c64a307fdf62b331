// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user side: [`VhostUserBackend`] for the device, the queue loop
//! that feeds descriptor chains to [`NnDevice::process_chain`], and the event
//! queue that tells the driver about model changes.
//!
//! Queues `0..n` are request queues, one worker thread each; queue `n` is the
//! event queue, served by thread 0 together with the device's change eventfd.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{error, warn};
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
use crate::stats::Stats;

/// Largest virtqueue size offered to the driver.
pub const QUEUE_SIZE: usize = 1024;

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
    exit: (EventConsumer, EventNotifier),
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
            device,
            exit,
        })
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

    /// Makes thread 0 wake up on model changes. Call once per daemon.
    pub fn register_change_listener(
        &self,
        daemon: &VhostUserDaemon<Arc<VhostUserNnBackend>>,
    ) -> io::Result<()> {
        let handlers = daemon.get_epoll_handlers();
        let handler = handlers
            .first()
            .ok_or_else(|| io::Error::other("the daemon has no worker thread"))?;
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

    fn announce_once(&self, vring: &VringRwLock) -> Result<(), Error> {
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return Ok(());
        };
        let mem = mem.memory();
        let cfg = self.device.config();
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        if *announced == cfg.generation
            && self.announced_status.load(Ordering::Relaxed) == cfg.status
        {
            return Ok(());
        }
        let Some(chain) = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(mem.clone())
        else {
            return Ok(());
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
        if let Err(e) = vring.add_used(head, len) {
            warn!("cannot return event buffer {head}: {e}");
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
        self.device.health().frontend_disconnected();
        if let Err(e) = self.exit.1.notify() {
            error!("cannot signal the worker threads to exit: {e}");
        }
    }

    /// Serves every available chain of `vring`, then signals the guest if the
    /// driver wants it. Returns `false` if the avail ring is unusable.
    fn process_queue(&self, queue: u16, vring: &VringRwLock) -> Result<bool, Error> {
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            warn!("queue kicked before the memory table was set");
            return Ok(false);
        };
        let mem = mem.memory();
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(it) => it.collect(),
            Err(e) => {
                // A broken avail ring: nothing can be served until the driver resets.
                warn!("cannot read the available ring: {e}");
                return Ok(false);
            }
        };
        let mut buf = self.buffers[usize::from(queue)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for chain in chains {
            let head = chain.head_index();
            let start = Instant::now();
            let outcome = self.device.process_chain(chain, &mem, &mut buf);
            self.stats
                .record(queue, outcome.status, outcome.samples, start.elapsed());
            self.device.health().progress(usize::from(queue));
            if let Err(e) = vring.add_used(head, outcome.used_len) {
                warn!("cannot return descriptor {head}: {e}");
            }
        }
        match vring.needs_notification() {
            Ok(false) => Ok(true),
            Ok(true) | Err(_) => vring
                .signal_used_queue()
                .map_err(Error::Signal)
                .map(|()| true),
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
        let mut masks: Vec<u64> = (0..self.num_queues).map(|q| 1u64 << q).collect();
        masks[0] |= 1 << self.num_queues;
        masks
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
        // not the device's (see `queues_per_thread`): thread t holds request
        // queue t at local index 0, thread 0 also the event queue at local
        // index 1, and the change eventfd is registered on thread 0 only.
        // So a request event's device queue is the thread id, and every
        // per-queue resource (buffers, stats) is indexed by it, never by
        // `device_event`. Any other (event, thread) pair, or vrings lacking
        // the local index, is an error and never an index panic (which would
        // kill the worker). Tested in vhu_nn/tests.rs.
        const EVENT_LOCAL: usize = 1;
        let unknown = || Error::UnknownEvent {
            event: device_event,
            thread: thread_id,
        };
        if device_event == self.change_event_id() {
            // Reset the eventfd counter; the generation itself is read from
            // the device.
            let _ = self.device.changed().read();
            let vring = vrings
                .get(EVENT_LOCAL)
                .filter(|_| thread_id == 0)
                .ok_or_else(unknown)?;
            return Ok(self.announce(vring)?);
        }
        if thread_id == 0 && usize::from(device_event) == EVENT_LOCAL {
            let vring = vrings.get(EVENT_LOCAL).ok_or_else(unknown)?;
            return Ok(self.announce(vring)?);
        }
        let queue = u16::try_from(thread_id)
            .ok()
            .filter(|&q| device_event == 0 && q < self.event_queue())
            .ok_or_else(unknown)?;
        let vring = vrings.first().ok_or_else(unknown)?;
        let device_event = queue;
        if !*self.event_idx.lock().unwrap_or_else(|e| e.into_inner()) {
            self.process_queue(device_event, vring)?;
            return Ok(());
        }
        // With EVENT_IDX the library only records the feature: keep serving
        // until no new chain arrived while notifications were off.
        loop {
            if let Err(e) = vring.disable_notification() {
                warn!("disable_notification: {e}");
            }
            // Invariant: the loop ends when a pass cannot read the avail
            // ring. With an avail idx more than the queue size ahead, iter()
            // fails while enable_notification() keeps reporting new buffers;
            // looping on that would spin at 100% CPU and the worker would
            // never see its exit event (so no next connection). Such a
            // queue is not served again until the driver kicks.
            if !self.process_queue(device_event, vring)? {
                break;
            }
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
