// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The vhost-user side: [`VhostUserBackend`] for the device and the queue
//! loop that feeds descriptor chains to [`NnDevice::process_chain`].

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{error, warn};
use thiserror::Error as ThisError;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::QueueOwnedT;
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
    /// An event arrived for a queue this device does not have.
    #[error("event for unknown queue {0}")]
    UnknownQueue(u16),
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
    exit: (EventConsumer, EventNotifier),
}

impl VhostUserNnBackend {
    /// A backend for `device` with `num_queues` request queues.
    pub fn new(device: Arc<NnDevice>, stats: Arc<Stats>, num_queues: usize) -> Result<Self, Error> {
        let exit =
            new_event_consumer_and_notifier(EventFlag::NONBLOCK).map_err(Error::ExitEvent)?;
        Ok(Self {
            device,
            stats,
            num_queues,
            mem: Mutex::new(None),
            event_idx: Mutex::new(false),
            buffers: (0..num_queues).map(|_| Mutex::default()).collect(),
            exit,
        })
    }

    /// The `--print-capabilities` JSON of the vhost-user spec. There is no
    /// backend type for this device in the spec; "virtio-nn" names it.
    pub fn capabilities() -> String {
        r#"{"type":"virtio-nn","features":[]}"#.to_string()
    }

    /// Asks the worker threads to stop.
    pub fn notify_exit(&self) {
        if let Err(e) = self.exit.1.notify() {
            error!("cannot signal the worker threads to exit: {e}");
        }
    }

    /// Serves every available chain of `vring`, then signals the guest if the
    /// driver wants it.
    fn process_queue(&self, queue: u16, vring: &VringRwLock) -> Result<(), Error> {
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            warn!("queue kicked before the memory table was set");
            return Ok(());
        };
        let mem = mem.memory();
        let chains: Vec<_> = match vring.get_mut().get_queue_mut().iter(mem.clone()) {
            Ok(it) => it.collect(),
            Err(e) => {
                // A broken avail ring: nothing can be served until the driver resets.
                warn!("cannot read the available ring: {e}");
                return Ok(());
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
            if let Err(e) = vring.add_used(head, outcome.used_len) {
                warn!("cannot return descriptor {head}: {e}");
            }
        }
        match vring.needs_notification() {
            Ok(false) => Ok(()),
            Ok(true) | Err(_) => vring.signal_used_queue().map_err(Error::Signal),
        }
    }
}

impl VhostUserBackend for VhostUserNnBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.num_queues
    }

    fn max_queue_size(&self) -> usize {
        QUEUE_SIZE
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        (0..self.num_queues).map(|q| 1u64 << q).collect()
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
        _thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(Error::UnexpectedEvents(evset).into());
        }
        let vring = vrings
            .get(device_event as usize)
            .ok_or(Error::UnknownQueue(device_event))?;
        if !*self.event_idx.lock().unwrap_or_else(|e| e.into_inner()) {
            return Ok(self.process_queue(device_event, vring)?);
        }
        // With EVENT_IDX the library only records the feature: keep serving
        // until no new chain arrived while notifications were off.
        loop {
            if let Err(e) = vring.disable_notification() {
                warn!("disable_notification: {e}");
            }
            self.process_queue(device_event, vring)?;
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
