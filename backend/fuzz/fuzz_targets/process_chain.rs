// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `NnDevice::process_chain` on arbitrary descriptor chains over guest
//! memory, as in the unit tests of device.rs (virtio-queue's mock queue, the
//! same small model): never panics, never writes more than the chain's
//! writable part, and an answered chain carries a well-formed response
//! header.
//!
//! Input: byte 0 = head index, byte 1 = number of descriptors (mod 17),
//! then 16 bytes per descriptor (addr, len, flags, next; addresses are
//! folded into or just past guest memory unless the top flag bit is set),
//! the rest is the request data placed at `DATA`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nn_core::protocol::{ResponseHeader, STATUS_DEVICE_ERROR};
use vhost_user_nn::device::{Buffers, NnDevice};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

const MEM: u64 = 0x20_0000;
const DATA: u64 = 0x10_0000;
const QSIZE: u16 = 16;

fn device() -> &'static NnDevice {
    static DEV: OnceLock<NnDevice> = OnceLock::new();
    DEV.get_or_init(|| vhost_user_nn::testing::small_device("fuzz"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let head = u16::from(data[0]) % (QSIZE + 2);
    let n = usize::from(data[1]) % (usize::from(QSIZE) + 1);
    let descs_end = 2 + 16 * n;
    if data.len() < descs_end {
        return;
    }
    let mem = GuestMemoryAtomic::new(
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap(),
    );
    let m = mem.memory();
    let payload = &data[descs_end..];
    let payload = &payload[..payload.len().min((MEM - DATA) as usize)];
    m.write_slice(payload, GuestAddress(DATA)).unwrap();

    let q = MockSplitQueue::new(&*m, QSIZE);
    for (i, d) in data[2..descs_end].chunks_exact(16).enumerate() {
        let raw_addr = u64::from_le_bytes(d[0..8].try_into().unwrap());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap());
        let flags = u16::from_le_bytes(d[12..14].try_into().unwrap());
        let next = u16::from_le_bytes(d[14..16].try_into().unwrap());
        // Mostly addresses in or near guest memory, so that real requests
        // are found; the top flag bit keeps the raw address.
        let addr = if flags & 0x8000 != 0 {
            raw_addr
        } else {
            DATA + raw_addr % (MEM - DATA + 0x1000)
        };
        let len = if flags & 0x4000 != 0 {
            len
        } else {
            len % 0x2000
        };
        let flags = flags & 0x7;
        let desc = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next % (QSIZE + 2)));
        q.desc_table().store(i as u16, desc).unwrap();
    }
    q.avail().ring().ref_at(0).unwrap().store(head.to_le());
    q.avail().idx().store(1u16.to_le());
    let mut queue: Queue = q.create_queue().unwrap();
    let Some(chain) = queue.iter(m.clone()).unwrap().next() else {
        return;
    };
    let writable: u64 = chain
        .clone()
        .filter(|d| d.is_write_only())
        .map(|d| u64::from(d.len()))
        .sum();
    let out = device().process_chain(chain, &m, &mut Buffers::default());
    assert!(u64::from(out.used_len) <= writable, "{out:?} > {writable}");
    match out.status {
        None => assert_eq!(out.used_len, 0),
        Some(s) => {
            assert!(s <= STATUS_DEVICE_ERROR, "{out:?}");
            assert!(out.used_len as usize >= ResponseHeader::SIZE || s == STATUS_DEVICE_ERROR);
        }
    }
});
