// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The admin protocol on arbitrary lines: every line gets a JSON object
//! with a boolean `ok`, and never a panic.
//!
//! `load` requests are redirected to a file holding the fuzz input (and a
//! known-good model half of the time), so the fuzzer exercises validation
//! and hot-swap without reading arbitrary paths such as /dev/zero.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use nn_core::fixed::ONE;
use nn_core::{Activation, Layer, Mlp, Model};
use vhost_user_nn::admin::{Admin, Request};
use vhost_user_nn::device::NnDevice;
use vhost_user_nn::stats::Stats;

fn model() -> Model {
    let l = Layer::new(3, 2, vec![ONE; 6], vec![0; 2], Activation::Identity).unwrap();
    Model::new(Mlp::new(vec![l]).unwrap(), "fuzz")
}

struct Env {
    admin: Admin,
    file: PathBuf,
    good: Vec<u8>,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dev = Arc::new(NnDevice::new(model(), "fuzz".into(), 1).unwrap());
        let stats = Arc::new(Stats::new(1));
        let file = std::env::temp_dir().join(format!("nn-fuzz-{}.safetensors", std::process::id()));
        Env {
            admin: Admin::new(dev, stats, nn_core::Kernel::Auto),
            file,
            good: model().to_bytes(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let env = env();
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let reply = match serde_json::from_str::<Request>(line) {
        Ok(Request::Load { .. }) => {
            let bytes = if data.len().is_multiple_of(2) {
                data
            } else {
                &env.good[..]
            };
            std::fs::write(&env.file, bytes).unwrap();
            env.admin.handle(Request::Load {
                path: env.file.clone(),
            })
        }
        _ => env.admin.handle_line(line),
    };
    assert!(reply["ok"].is_boolean(), "{reply}");
    if reply["ok"] == false {
        assert!(reply["error"].is_string(), "{reply}");
    }
});
