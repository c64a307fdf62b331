// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Bounded work per chain and per ring (issue 12), against the real daemon
//! through the test frontend: GET_VRING_BASE stops a ring even in the middle
//! of a long request, a chain longer than the queue is refused without being
//! walked to its end, and a flood of bad chains writes a bounded number of
//! log lines.

use std::time::{Duration, Instant};

use nn_core::protocol::STATUS_OK;
use vhost_user_nn::testing::frontend::{Buf, Frontend, RawDesc, F_INDIRECT, F_NEXT};

mod common;

#[test]
fn get_vring_base_during_a_long_request_means_no_used_write_after_it() {
    const DIMS: [usize; 3] = [1024, 1024, 1024];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.safetensors");
    std::fs::write(&path, common::model(&DIMS, 3, "big").to_bytes()).unwrap();
    let daemon = common::daemon()
        .model(&path)
        .start()
        .expect("daemon starts");
    let fe = Frontend::connect(daemon.socket(), 1).expect("frontend connects");
    let chain = common::max_cost_chain(&fe, 0, DIMS[0], DIMS[2]);
    let resp_len = chain[1].len as usize;
    const POSTED: usize = 20;
    // Until the stop falls inside a request (the worker took a chain it has
    // not answered): a few tries, each on a freshly restarted ring.
    let mut caught = false;
    for attempt in 0..10 {
        for _ in 0..POSTED {
            fe.submit(0, &chain).unwrap();
        }
        // The first answer shows the worker at work; it takes the next
        // chain at once.
        let first = fe.wait_used(0, Duration::from_secs(10)).expect("served");
        assert_eq!(first.len as usize, resp_len);
        std::thread::sleep(Duration::from_millis(5));
        let stop = Instant::now();
        let base = fe.get_vring_base(0).expect("GET_VRING_BASE answered");
        let stop_took = stop.elapsed();
        let used_at_stop = fe.used_idx(0).unwrap();
        // The ring is started again at once, as after a guest's device
        // reset: a stale answer would now land in the new ring.
        fe.restart_queue(0).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let used_after = fe.used_idx(0).unwrap();
        println!(
            "try {attempt}: GET_VRING_BASE took {stop_took:?}: next avail {base}, used idx \
             at the stop {used_at_stop}, used idx of the restarted ring 300 ms later \
             {used_after}"
        );
        assert!(
            u32::from(used_at_stop) <= base,
            "used {used_at_stop} beyond the avail base {base}"
        );
        assert_eq!(
            used_after, 0,
            "a chain of the old ring was returned into the new one"
        );
        if u32::from(used_at_stop) < base {
            caught = true;
            break;
        }
    }
    assert!(caught, "no stop fell inside a request in 10 tries");
    // The restarted ring serves.
    let (h, _) = fe
        .predict(0, &vec![0; DIMS[0]], 1)
        .expect("served after the restart");
    assert_eq!(h.status, STATUS_OK);
    assert_eq!(fe.used_idx(0).unwrap(), 1);
}

#[test]
fn a_65535_descriptor_indirect_chain_is_refused_without_walking_it() {
    let (daemon, fe) = common::default_daemon_and_frontend(256);
    let scratch = fe.scratch(0);
    // 65535 entries of 16 bytes fill the scratch area but its last 16 bytes;
    // they all point at those 16 bytes.
    const ENTRIES: u32 = 65535;
    let data = scratch + 16 * u64::from(ENTRIES);
    let table: Vec<u8> = (0..ENTRIES)
        .flat_map(|i| {
            let last = i + 1 == ENTRIES;
            let (flags, next) = if last { (0, 0) } else { (F_NEXT, i as u16 + 1) };
            RawDesc::new(data, 16, flags, next).to_bytes()
        })
        .collect();
    fe.write(scratch, &table).unwrap();
    fe.submit_raw(0, &[RawDesc::new(scratch, 16 * ENTRIES, F_INDIRECT, 0)], 0)
        .unwrap();
    let used = fe.wait_used(0, Duration::from_secs(10)).expect("returned");
    assert_eq!(used.len, 0, "refused: nothing written");
    let log = daemon.log();
    assert!(
        log.contains("descriptor chain longer than 256 descriptors"),
        "refused for its length, not walked to its end:\n{log}"
    );
    // Still serving.
    let in_dim = fe.config().unwrap().input_dim() as usize;
    let (h, _) = fe.predict(0, &vec![0; in_dim], 1).expect("served");
    assert_eq!(h.status, STATUS_OK);
}

#[test]
fn a_flood_of_bad_chains_writes_a_bounded_number_of_log_lines() {
    let (daemon, fe) = common::default_daemon_and_frontend(1024);
    // Chains with no room for a response header: each is returned unanswered
    // with a warning.
    let at = fe.scratch(0);
    const BAD: usize = 3000;
    let mut returned = 0;
    while returned < BAD {
        for _ in 0..500 {
            fe.submit(0, &[Buf::r(at, 24), Buf::w(at + 64, 8)]).unwrap();
        }
        for _ in 0..500 {
            let u = fe.wait_used(0, Duration::from_secs(10)).expect("returned");
            assert_eq!(u.len, 0);
            returned += 1;
        }
    }
    let in_dim = fe.config().unwrap().input_dim() as usize;
    let (h, _) = fe.predict(0, &vec![0; in_dim], 1).expect("served");
    assert_eq!(h.status, STATUS_OK);
    let log = daemon.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("cannot hold a response header"))
        .count();
    println!("{BAD} bad chains, {lines} log lines");
    assert!(lines >= 1, "the bad chains were logged at all:\n{log}");
    // The flood takes well under one rate-limit interval (5 s): one burst,
    // and perhaps a second one.
    assert!(lines <= 20, "{lines} log lines for {BAD} bad chains");
}
