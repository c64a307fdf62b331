// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! In-process tests of [`VhostUserNnBackend::handle_event`] with real
//! [`VringRwLock`]s over guest memory (as rust-vmm's vhost-device-vsock
//! tests its backend), laid out by virtio-queue's `MockSplitQueue`: each
//! worker thread gets the slice of vrings the library hands it (thread `t <
//! n`: request queue `t`; thread `n`: the event queue), so these tests pin
//! the mapping from (thread, device event) to device queue.

use std::fs::File;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use nn_core::protocol::{
    self, DeviceConfig, Event, ModelChunk, ModelRequest, RequestHeader, ResponseHeader,
    CONFIG_SIZE, EVENT_CONFIG_CHANGED, OP_GET_MODEL, OP_PREDICT, STATUS_OK,
};
use nn_core::Model;
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::VhostUserNnBackend;
use crate::device::NnDevice;
use crate::stats::Stats;
use crate::testing::small_model;

/// Entries per test queue.
const SIZE: u16 = 16;
/// Guest memory size; queue `q`'s rings start at `q * QUEUE_STRIDE`, its
/// request and response buffers at `BUFS + q * QUEUE_STRIDE`.
const MEM: usize = 0x100_0000;
const QUEUE_STRIDE: u64 = 0x10_0000;
const BUFS: u64 = 0x8_0000;

/// One virtqueue: the vring the backend sees, the driver's view of the same
/// memory, and its call eventfd.
struct Queue {
    vring: VringRwLock,
    /// The driver's side (creating one zeroes the rings: one per queue).
    mock: MockSplitQueue<'static, GuestMemoryMmap<()>>,
    base: u64,
    call: EventFd,
    /// Next free descriptor.
    next_desc: u16,
}

/// A backend with `n` request queues, its device and stats, guest memory,
/// and its `n + 1` queues (the event queue last), all ready.
struct Env {
    backend: Arc<VhostUserNnBackend>,
    device: Arc<NnDevice>,
    stats: Arc<Stats>,
    /// The same memory as the backend's (the regions are shared), leaked
    /// so that the queues' mocks can borrow it for the whole test.
    mmap: &'static GuestMemoryMmap<()>,
    queues: Vec<Queue>,
}

impl Env {
    fn new(n: usize) -> Self {
        let device = Arc::new(NnDevice::new(small_model("a"), "a".into(), n as u32).unwrap());
        let stats = Arc::new(Stats::new(n as u32));
        let backend = Arc::new(VhostUserNnBackend::new(device.clone(), stats.clone(), n).unwrap());
        let mmap: &'static GuestMemoryMmap<()> = Box::leak(Box::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).unwrap(),
        ));
        let mem = GuestMemoryAtomic::new(mmap.clone());
        backend.update_memory(mem.clone()).unwrap();
        let queues = (0..=n)
            .map(|q| {
                let base = q as u64 * QUEUE_STRIDE;
                let mock = MockSplitQueue::create(mmap, GuestAddress(base), SIZE);
                let vring = VringRwLock::new(mem.clone(), SIZE).unwrap();
                vring.set_queue_size(SIZE);
                vring
                    .set_queue_info(
                        mock.desc_table_addr().0,
                        mock.avail_addr().0,
                        mock.used_addr().0,
                    )
                    .unwrap();
                vring.set_queue_ready(true);
                vring.set_enabled(true);
                let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
                let dup = call.try_clone().unwrap().into_raw_fd();
                // SAFETY: `dup` is a fresh duplicate of the eventfd that
                // nothing else owns; the File takes ownership of it.
                vring.set_call(Some(unsafe { File::from_raw_fd(dup) }));
                Queue {
                    vring,
                    mock,
                    base,
                    call,
                    next_desc: 0,
                }
            })
            .collect();
        Self {
            backend,
            device,
            stats,
            mmap,
            queues,
        }
    }

    /// The vrings worker thread `t` is given by the library (thread `n`
    /// has the event queue).
    fn thread_vrings(&self, t: usize) -> Vec<VringRwLock> {
        vec![self.queues[t].vring.clone()]
    }

    /// The driver's view of queue `q`.
    fn mock(&self, q: usize) -> &MockSplitQueue<'static, GuestMemoryMmap<()>> {
        &self.queues[q].mock
    }

    /// Posts one chain of `(len, writable)` buffers on queue `q`, the
    /// buffers laid out one after another from `addr`; returns its head.
    fn post(&mut self, q: usize, addr: u64, bufs: &[(u32, bool)]) -> u16 {
        let head = self.queues[q].next_desc;
        let mut off = addr;
        let descs: Vec<RawDescriptor> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(len, w))| {
                let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
                if i + 1 < bufs.len() {
                    flags |= VRING_DESC_F_NEXT as u16;
                }
                let d = SplitDescriptor::new(off, len, flags, head + i as u16 + 1);
                off += u64::from(len);
                RawDescriptor::from(d)
            })
            .collect();
        self.mock(q).add_desc_chains(&descs, head).unwrap();
        self.queues[q].next_desc += bufs.len() as u16;
        head
    }

    /// Posts a predict request for `inputs` on request queue `q`; returns
    /// the chain's head and where the response goes.
    fn post_request(&mut self, q: usize, id: u64, inputs: &[i32], n: u32) -> (u16, u64) {
        let h = RequestHeader {
            opcode: OP_PREDICT,
            flags: 0,
            id,
            num_samples: n,
            in_dim: 3,
        };
        let mut req = h.to_bytes().to_vec();
        let mut v = vec![0u8; inputs.len() * 4];
        protocol::encode_values(inputs, &mut v);
        req.extend(v);
        let addr = self.queues[q].base + BUFS + u64::from(self.queues[q].next_desc) * 0x1000;
        self.mmap.write_slice(&req, GuestAddress(addr)).unwrap();
        let resp_len = (ResponseHeader::SIZE + 4 * 2 * n as usize) as u32;
        let head = self.post(q, addr, &[(req.len() as u32, false), (resp_len, true)]);
        (head, addr + req.len() as u64)
    }

    /// Posts a `GET_MODEL` request on request queue `q` with room for
    /// `length` bytes; returns the chain's head and where the response goes.
    fn post_get_model(
        &mut self,
        q: usize,
        generation: u32,
        offset: u32,
        length: u32,
    ) -> (u16, u64) {
        let h = RequestHeader {
            opcode: OP_GET_MODEL,
            flags: 0,
            id: u64::from(offset),
            num_samples: 0,
            in_dim: 0,
        };
        let mut req = h.to_bytes().to_vec();
        req.extend(
            ModelRequest {
                generation,
                offset,
                length,
                reserved: 0,
            }
            .to_bytes(),
        );
        let addr = self.queues[q].base + BUFS + u64::from(self.queues[q].next_desc) * 0x1000;
        self.mmap.write_slice(&req, GuestAddress(addr)).unwrap();
        let resp_len = (ResponseHeader::SIZE + ModelChunk::SIZE) as u32 + length;
        let head = self.post(q, addr, &[(req.len() as u32, false), (resp_len, true)]);
        (head, addr + req.len() as u64)
    }

    /// Sends one `GET_MODEL` through request queue 0's worker; returns the
    /// response header, and the chunk header and bytes on success.
    fn get_model(
        &mut self,
        generation: u32,
        offset: u32,
        length: u32,
    ) -> (ResponseHeader, Option<(ModelChunk, Vec<u8>)>) {
        let (head, resp) = self.post_get_model(0, generation, offset, length);
        self.backend
            .handle_event(0, EventSet::IN, &self.thread_vrings(0), 0)
            .unwrap();
        let (id, len) = *self.used(0).last().unwrap();
        assert_eq!(id, u32::from(head));
        let bytes = self.read(resp, len as usize);
        let h = ResponseHeader::from_bytes(bytes[..ResponseHeader::SIZE].try_into().unwrap());
        assert_eq!(h.id, u64::from(offset));
        if h.status != STATUS_OK {
            return (h, None);
        }
        let c = ModelChunk::from_bytes(bytes[24..40].try_into().unwrap());
        assert_eq!(len as usize, 40 + c.length as usize);
        (h, Some((c, bytes[40..].to_vec())))
    }

    /// The config space, as QEMU reads it (GET_CONFIG).
    fn config(&self) -> DeviceConfig {
        let b = self.backend.get_config(0, CONFIG_SIZE as u32);
        DeviceConfig::from_bytes(&b.try_into().unwrap())
    }

    /// The used entries of queue `q` so far, as (head, len).
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let mock = self.mock(q);
        let idx = mock.used().idx().load();
        (0..idx)
            .map(|i| {
                let e = mock.used().ring().ref_at(usize::from(i)).unwrap().load();
                (e.id(), e.len())
            })
            .collect()
    }

    /// Whether queue `q`'s call eventfd was signalled (and resets it).
    fn called(&self, q: usize) -> bool {
        self.queues[q].call.read().is_ok()
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mmap.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }
}

fn inputs(seed: i32, n: u32) -> Vec<i32> {
    (0..3 * n as i32)
        .map(|i| (i * 7919 + seed * 104_729) % 200_000 - 100_000)
        .collect()
}

#[test]
fn each_thread_serves_its_own_request_queue() {
    const N: usize = 3;
    let mut env = Env::new(N);
    let model: Model = small_model("a");
    for q in 0..N {
        let n = q as u32 + 1;
        let x = inputs(q as i32, n);
        let (head, resp) = env.post_request(q, 100 + q as u64, &x, n);
        // Thread q, its local queue 0.
        env.backend
            .handle_event(0, EventSet::IN, &env.thread_vrings(q), q)
            .unwrap();
        let out_len = ResponseHeader::SIZE + 8 * n as usize;
        assert_eq!(
            env.used(q),
            vec![(u32::from(head), out_len as u32)],
            "queue {q}'s used ring"
        );
        for other in (0..=N).filter(|&o| o != q) {
            let want = usize::from(other < q);
            assert_eq!(env.used(other).len(), want, "queue {other} after queue {q}");
        }
        assert!(env.called(q), "queue {q} signalled");
        assert!(
            (0..=N).filter(|&o| o != q).all(|o| !env.called(o)),
            "only queue {q} signalled"
        );
        let bytes = env.read(resp, out_len);
        let h = ResponseHeader::from_bytes(bytes[..ResponseHeader::SIZE].try_into().unwrap());
        assert_eq!(
            (h.status, h.id, h.num_samples, h.out_dim, h.generation),
            (STATUS_OK, 100 + q as u64, n, 2, 1)
        );
        let mut y = vec![0i32; 2 * n as usize];
        protocol::decode_values(&bytes[ResponseHeader::SIZE..], &mut y);
        let want: Vec<i32> = x
            .chunks(3)
            .flat_map(|s| model.mlp.predict(s).unwrap())
            .collect();
        assert_eq!(y, want, "queue {q}'s answers");
    }
    // Each queue's counters saw exactly its own request.
    let s = env.stats.summary();
    for q in 0..N {
        let qs = &s.queues[q];
        assert_eq!(
            (qs.queue, qs.ok, qs.errors, qs.samples),
            (q as u32, 1, 0, q as u64 + 1),
            "stats of queue {q}: {s:?}"
        );
    }
}

#[test]
fn a_model_swap_is_announced_on_the_event_queue_by_its_own_thread() {
    const N: usize = 2;
    let mut env = Env::new(N);
    let ev = N;
    let change = env.backend.change_event_id();
    let buf = env.queues[ev].base + BUFS;
    let head = env.post(ev, buf, &[(Event::SIZE as u32, true)]);
    // Nothing changed yet: a pass over the event queue sends nothing.
    env.backend
        .handle_event(0, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert!(env.used(ev).is_empty());

    assert_eq!(env.device.swap(small_model("b"), "b".into()), 2);
    env.backend
        .handle_event(change, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert_eq!(env.used(ev), vec![(u32::from(head), Event::SIZE as u32)]);
    assert!(env.called(ev));
    let e = Event::from_bytes(&env.read(buf, Event::SIZE).try_into().unwrap());
    assert_eq!(
        (e.kind, e.generation, e.status),
        (EVENT_CONFIG_CHANGED, 2, protocol::DEVICE_STATUS_READY)
    );
    // The change eventfd was reset; request queue 0 was not touched.
    assert!(env.device.changed().read().is_err());
    assert!(env.used(0).is_empty());

    // A change with no buffer posted waits for the next buffer, which the
    // driver's kick (the event queue's own event on its thread) fills.
    assert_eq!(env.device.swap(small_model("c"), "c".into()), 3);
    env.backend
        .handle_event(change, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert_eq!(env.used(ev).len(), 1);
    let head = env.post(ev, buf + 0x100, &[(Event::SIZE as u32, true)]);
    env.backend
        .handle_event(0, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert_eq!(env.used(ev)[1], (u32::from(head), Event::SIZE as u32));
    let e = Event::from_bytes(&env.read(buf + 0x100, Event::SIZE).try_into().unwrap());
    assert_eq!(e.generation, 3);
    // Announced once: another pass with a buffer posted sends nothing.
    env.post(ev, buf + 0x200, &[(Event::SIZE as u32, true)]);
    env.backend
        .handle_event(0, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert_eq!(env.used(ev).len(), 2);
}

#[test]
fn unknown_event_and_thread_combinations_are_errors_not_panics() {
    const N: usize = 2;
    let env = Env::new(N);
    let vr = |t| env.thread_vrings(t);
    let cases: Vec<(u16, Vec<VringRwLock>, usize)> = vec![
        // Thread 1 has one queue: no local index 1.
        (1, vr(1), 1),
        // No thread N + 1 (threads 0..=N).
        (0, vr(1), N + 1),
        (0, vr(1), usize::MAX),
        // Request-queue threads have local queue 0 only.
        (1, vr(0), 0),
        (7, vr(0), 0),
        // The event thread has local queue 0 and the change listener only.
        (1, vr(N), N),
        (7, vr(N), N),
        // The vrings do not match the thread (fewer than it has).
        (0, Vec::new(), 1),
        (0, Vec::new(), N),
    ];
    for (event, vrings, thread) in cases {
        let r = env
            .backend
            .handle_event(event, EventSet::IN, &vrings, thread);
        let e = r.expect_err(&format!("event {event} on thread {thread}"));
        assert!(
            e.to_string().contains("is not one of worker thread"),
            "event {event} on thread {thread}: {e}"
        );
    }
    let e = env
        .backend
        .handle_event(0, EventSet::OUT, &vr(0), 0)
        .unwrap_err();
    assert!(e.to_string().contains("unexpected epoll events"), "{e}");
    // Nothing was served or returned on any queue.
    assert!((0..=N).all(|q| env.used(q).is_empty()));
}

#[test]
fn event_idx_loop_with_avail_idx_far_ahead_terminates() {
    let mut env = Env::new(1);
    env.backend.set_event_idx(true);
    env.queues[0].vring.set_queue_event_idx(true);
    // One good request first: served with EVENT_IDX on.
    let x = inputs(5, 2);
    let (head, _) = env.post_request(0, 1, &x, 2);
    env.backend
        .handle_event(0, EventSet::IN, &env.thread_vrings(0), 0)
        .unwrap();
    assert_eq!(env.used(0), vec![(u32::from(head), 24 + 16)]);
    // Then an avail idx far more than the queue size ahead of what was
    // served: the avail ring cannot be read, and the loop must stop.
    let mock = env.mock(0);
    let idx = mock.avail().idx().load();
    mock.avail().idx().store(idx.wrapping_add(10 * SIZE));
    let (tx, rx) = mpsc::channel();
    let backend = env.backend.clone();
    let vrings = env.thread_vrings(0);
    std::thread::spawn(move || {
        let r = backend.handle_event(0, EventSet::IN, &vrings, 0);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("handle_event returns (it spun instead)");
    assert_eq!(r, Ok(()));
    assert_eq!(env.used(0).len(), 1, "nothing served from the broken ring");
}

/// Sets an eventfd as `q`'s kick and returns our end of it.
fn kick_fd(env: &Env, q: usize) -> EventFd {
    let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let dup = kick.try_clone().unwrap().into_raw_fd();
    // SAFETY: `dup` is a fresh duplicate that nothing else owns; the File
    // takes ownership of it.
    env.queues[q]
        .vring
        .set_kick(Some(unsafe { File::from_raw_fd(dup) }));
    kick
}

#[test]
fn a_pass_ends_at_its_time_budget_and_re_arms_its_kick() {
    let mut env = Env::new(1);
    let kick = kick_fd(&env, 0);
    // Every request takes longer than a pass may.
    env.device
        .set_test_delay(super::PASS_TIME.as_millis() as u64 + 1);
    for i in 0..3 {
        env.post_request(0, i, &inputs(i as i32, 1), 1);
    }
    for served in 1..=3 {
        env.backend
            .handle_event(0, EventSet::IN, &env.thread_vrings(0), 0)
            .unwrap();
        assert_eq!(env.used(0).len(), served, "one chain per pass");
        assert!(env.called(0), "each pass signals what it returned");
        assert_eq!(
            kick.read().ok(),
            Some(1),
            "pass {served} re-armed the queue"
        );
    }
    // Nothing left: the next pass returns without re-arming.
    env.backend
        .handle_event(0, EventSet::IN, &env.thread_vrings(0), 0)
        .unwrap();
    assert!(kick.read().is_err(), "a drained queue is not re-armed");
}

#[test]
fn a_disabled_event_queue_is_not_written_until_enabled() {
    const N: usize = 1;
    let mut env = Env::new(N);
    let ev = N;
    let change = env.backend.change_event_id();
    let buf = env.queues[ev].base + BUFS;
    let head = env.post(ev, buf, &[(Event::SIZE as u32, true)]);
    env.queues[ev].vring.set_enabled(false);
    assert_eq!(env.device.swap(small_model("b"), "b".into()), 2);
    env.backend
        .handle_event(change, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert!(env.used(ev).is_empty(), "written while disabled");
    env.queues[ev].vring.set_enabled(true);
    env.backend
        .handle_event(0, EventSet::IN, &env.thread_vrings(ev), ev)
        .unwrap();
    assert_eq!(env.used(ev), vec![(u32::from(head), Event::SIZE as u32)]);
    let e = Event::from_bytes(&env.read(buf, Event::SIZE).try_into().unwrap());
    assert_eq!(e.generation, 2);
}

/// The driver's fetch of the model through a real vring: chunks of the
/// served file, reassembled, equal the model's canonical file, and their
/// CRC-32C and size are config space's; a swap between two chunks is
/// answered MODEL_CHANGED with the new generation, whose file config space
/// then describes and a fresh fetch reads.
#[test]
fn the_model_is_fetched_in_chunks_and_a_swap_between_them_is_seen() {
    // Few chains: the test queue has 16 descriptors, two per request.
    const STEP: u32 = 200;
    let mut env = Env::new(1);
    let cfg = env.config();
    assert_eq!(cfg.generation, 1);
    let mut file = Vec::new();
    while file.len() < cfg.model_size as usize {
        let at = file.len() as u32;
        let (h, chunk) = env.get_model(cfg.generation, at, STEP);
        assert_eq!((h.status, h.generation), (STATUS_OK, 1), "chunk at {at}");
        let (c, bytes) = chunk.unwrap();
        assert_eq!(
            (c.model_size, c.model_crc32c, c.offset),
            (cfg.model_size, cfg.model_crc32c, at)
        );
        file.extend(bytes);
    }
    assert_eq!(file, small_model("a").to_bytes());
    assert!(file.len() > 2 * STEP as usize, "more than two chunks");
    assert_eq!(nn_core::model::crc32c(&file), cfg.model_crc32c);
    assert_eq!(
        env.stats.summary().queues[0].ok,
        file.len().div_ceil(STEP as usize) as u64
    );

    // Half of a fetch, then a swap: the next chunk says the model changed.
    let (h, _) = env.get_model(0, 0, STEP);
    assert_eq!(h.generation, 1);
    let other = {
        use nn_core::fixed::ONE;
        use nn_core::{Activation, Layer, Mlp};
        let l = Layer::new(3, 4, vec![ONE; 12], vec![1, 2, 3, 4], Activation::Relu).unwrap();
        Model::new(Mlp::new(vec![l]).unwrap(), "b")
    };
    assert_eq!(env.device.swap(other.clone(), "b".into()), 2);
    let (h, chunk) = env.get_model(1, STEP, STEP);
    assert_eq!(
        (h.status, h.generation),
        (protocol::STATUS_MODEL_CHANGED, 2)
    );
    assert!(chunk.is_none());
    let cfg2 = env.config();
    let want = other.to_bytes();
    assert_eq!(
        (cfg2.generation, cfg2.model_size, cfg2.model_crc32c),
        (2, want.len() as u32, nn_core::model::crc32c(&want))
    );
    let mut file = Vec::new();
    while file.len() < cfg2.model_size as usize {
        let (h, chunk) = env.get_model(2, file.len() as u32, STEP);
        assert_eq!((h.status, h.generation), (STATUS_OK, 2));
        file.extend(chunk.unwrap().1);
    }
    assert_eq!(file, want);
}
