// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! `NN_CORE_KERNEL` in the daemon's environment (how the avocado tests pick
//! the nn-core path) must reach the worker, and must not stop the
//! supervisor's spawner, whose `--spawner-fd` excludes every other option.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{default_model, DAEMON};

#[test]
fn nn_core_kernel_in_the_environment_starts_a_worker_on_that_kernel() {
    let dir = std::env::temp_dir().join(format!("nn-kernel-env.{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("daemon.log");
    let mut child = Command::new(DAEMON)
        .arg("--socket-path")
        .arg(dir.join("nn.sock"))
        .arg("--model")
        .arg(default_model())
        .env("NN_CORE_KERNEL", "scalar")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let exited = child.try_wait().unwrap();
        let started = text.contains("ready") && text.contains(" kernel");
        if started || exited.is_some() || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(text.contains("worker") && text.contains("ready"), "{text}");
    assert!(text.contains("on the scalar kernel"), "{text}");
}
