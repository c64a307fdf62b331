// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! End to end: the real daemon, a QEMU guest, the real `virtio_nn` module.
//!
//! These boot a guest, so they are `#[ignore]`d in a plain `cargo test`;
//! `scripts/test.sh` builds everything and runs them with `--ignored`.

use nn_core::Model;
use virtio_nn_tests::{
    csv, daemon, default_model, parse_csv, reference_int, reference_q16, Daemon, Guest,
};

const PREDICT: &str = "/proc/neural_network/predict";
const PREDICT_Q16: &str = "/proc/neural_network/predict_q16";

fn setup() -> (Model, Daemon, Guest) {
    let model = Model::load(&default_model()).expect("default model loads");
    let daemon = daemon(&default_model())
        .and_then(|d| d.start())
        .expect("daemon starts ($VIRTIO_NN_DAEMON)");
    let guest = Guest::boot(&daemon).expect("guest boots");
    (model, daemon, guest)
}

/// Writes `input` to `file` and reads the answer back, in one shell line as
/// the original design does (two separate opens of the file).
fn predict(guest: &mut Guest, file: &str, input: &[i32]) -> Vec<i32> {
    let out = guest
        .ok(&format!("echo {} > {file} && cat {file}", csv(input)))
        .expect("prediction succeeds");
    parse_csv(&out).unwrap_or_else(|| panic!("unparsable answer {out:?}"))
}

/// A small deterministic generator for test inputs (no dependency needed).
fn lcg(seed: &mut u64) -> i32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 32) as i32
}

#[test]
#[ignore = "boots a QEMU guest: run scripts/test.sh"]
fn proc_answers_equal_host_reference_bit_for_bit() {
    let (model, mut daemon, mut guest) = setup();
    let dim = model.mlp.input_dim();

    // Whole-number inputs through the seed's interface, including negatives
    // and the extremes of the whole-number range.
    let seed_input: Vec<i32> = (1..=dim as i32).collect();
    let int_cases = [
        seed_input.clone(),
        (0..dim as i32)
            .map(|i| if i % 2 == 0 { -i * 7 } else { i * 3 })
            .collect(),
        (0..dim)
            .map(|i| if i % 3 == 0 { 32767 } else { -32768 })
            .collect(),
        vec![0; dim],
    ];
    for input in &int_cases {
        assert_eq!(
            predict(&mut guest, PREDICT, input),
            reference_int(&model, input),
            "input {input:?}"
        );
    }

    // Raw Q16.16 through the full-precision file: fractions, random values and
    // the extremes of i32, which saturate inside the network.
    let mut seed = 7;
    let mut q16_cases: Vec<Vec<i32>> = vec![
        seed_input.iter().map(|v| v << 16).collect(),
        (0..dim as i32).map(|i| (i - 8) * 12345).collect(),
        (0..dim)
            .map(|i| if i % 2 == 0 { i32::MAX } else { i32::MIN })
            .collect(),
        vec![i32::MAX; dim],
        vec![i32::MIN; dim],
    ];
    q16_cases.extend((0..4).map(|_| (0..dim).map(|_| lcg(&mut seed) >> 8).collect()));
    let mut saturated = false;
    for input in &q16_cases {
        let want = reference_q16(&model, input);
        saturated |= want.iter().any(|&v| v == i32::MAX || v == i32::MIN);
        assert_eq!(
            predict(&mut guest, PREDICT_Q16, input),
            want,
            "input {input:?}"
        );
    }
    assert!(
        saturated,
        "no case reached the saturation bounds; the test lost its edge"
    );

    // Each open file keeps its own answer: two files opened side by side.
    let a: Vec<i32> = vec![1; dim];
    let b: Vec<i32> = vec![-2; dim];
    let out = guest
        .ok(&format!(
            "exec 3<>{PREDICT} 4<>{PREDICT}; echo {} >&3; echo {} >&4; cat <&3; cat <&4; exec 3<&- 4<&-",
            csv(&a),
            csv(&b)
        ))
        .unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert_eq!(parse_csv(lines[0]).unwrap(), reference_int(&model, &a));
    assert_eq!(parse_csv(lines[1]).unwrap(), reference_int(&model, &b));

    guest.shutdown().expect("guest powers off");
    assert!(daemon.is_running(), "daemon died: {}", daemon.log());
}

#[test]
#[ignore = "boots a QEMU guest: run scripts/test.sh"]
fn bad_writes_get_einval_and_change_nothing() {
    let (model, mut daemon, mut guest) = setup();
    let dim = model.mlp.input_dim();
    let good: Vec<i32> = (1..=dim as i32).collect();
    let want = reference_int(&model, &good);
    assert_eq!(predict(&mut guest, PREDICT, &good), want);

    // Shell commands that print the bad text (a tty line holds only 4 KiB,
    // so the over-long write is generated in the guest).
    let bad: Vec<String> = [
        csv(&good[..dim - 1]),                            // too few
        csv(&[good.clone(), vec![1]].concat()),           // too many
        "a,b,c".to_string(),                              // not numbers
        format!("{},x", csv(&good[..dim - 1])),           // one non-number
        format!("{},32768", csv(&good[..dim - 1])),       // does not fit Q16.16
        format!("{},99999999999", csv(&good[..dim - 1])), // overflows i32
        format!("{},,", csv(&good[..dim - 2])),           // empty fields
        format!("{} 1", csv(&good[..dim - 1])),           // junk inside a field
    ]
    .iter()
    .map(|b| format!("echo '{b}'"))
    .chain([
        "echo".to_string(),                                 // no numbers at all
        "head -c 70000 /dev/zero | tr '\\0' 1".to_string(), // longer than 64 KiB
    ])
    .collect();
    // Keep one file open across the bad writes: its answer must survive.
    guest
        .ok(&format!("exec 3<>{PREDICT}; echo {} >&3", csv(&good)))
        .unwrap();
    for b in &bad {
        for target in ["&3", PREDICT] {
            // dd writes the whole text in one write(2), as the driver must
            // see it.
            let cmd = format!("{b} > /tmp/bad; dd if=/tmp/bad bs=1M count=1 >{target}");
            let (out, code) = guest.run(&cmd).unwrap();
            assert_ne!(code, 0, "`{b:.60}` >{target} succeeded");
            assert!(
                out.contains("Invalid argument"),
                "`{b:.60}` >{target}: {out}"
            );
        }
    }
    let after = guest.ok("cat <&3; exec 3<&-").unwrap();
    assert_eq!(
        parse_csv(&after).unwrap(),
        want,
        "bad writes changed the stored answer"
    );
    // The session's last answer also survived the failed writes.
    assert_eq!(
        parse_csv(&guest.ok(&format!("cat {PREDICT}")).unwrap()).unwrap(),
        want
    );

    // Still serving.
    let again: Vec<i32> = vec![3; dim];
    assert_eq!(
        predict(&mut guest, PREDICT, &again),
        reference_int(&model, &again)
    );

    // Unload and reload the module while the device stays attached.
    guest.ok("rmmod virtio_nn").unwrap();
    let (_, code) = guest.run(&format!("test -e {PREDICT}")).unwrap();
    assert_ne!(code, 0, "/proc entry left behind after rmmod");
    guest.ok("insmod /lib/modules/virtio_nn.ko").unwrap();
    assert_eq!(predict(&mut guest, PREDICT, &good), want);

    let dmesg = guest.ok("dmesg").unwrap();
    let bad = virtio_nn_tests::bad_kernel_log_lines(&dmesg);
    assert!(bad.is_empty(), "guest log has {bad:?}:\n{dmesg}");
    guest.shutdown().expect("guest powers off");
    assert!(daemon.is_running(), "daemon died: {}", daemon.log());
}
