// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The guest-facing definitions have one source, `nn_core::protocol`,
//! `nn_core::dev_abi` and `nn_core::proc_text`; everything that cannot use
//! them directly is checked against them here:
//!
//! * the C glue's `VIRTIO_ID_NN` and misc device name
//!   (`guest-driver/virtio_nn_glue.c`);
//! * the uapi header `guest-driver/include/neural_dev.h`, compiled with the
//!   host's C compiler: its constants, struct sizes and field offsets;
//! * the QEMU device properties `scripts/qemu.sh --print-device` builds (the
//!   one place they are made);
//! * what `tests/avocado/nnlib.py` makes of `nn-model abi` (this crate's
//!   binary): the /dev requests and answers it builds and reads, and the
//!   device_add arguments it takes from `qemu.sh`;
//! * and that no script or test keeps a literal copy of a /dev magic or of
//!   the device id.
//!
//! These read files of the repository around this crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use nn_core::dev_abi::{self, Kind, Request};
use nn_core::protocol;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("nn-core/ has a parent")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("nn-core-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs a command that must succeed; returns its stdout.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `key value` lines as a map.
fn pairs(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn c_glue_uses_the_protocols_device_id_and_dev_name() {
    let glue = read("guest-driver/virtio_nn_glue.c");
    let ids: Vec<&str> = glue
        .lines()
        .filter_map(|l| l.trim().strip_prefix("#define VIRTIO_ID_NN "))
        .collect();
    assert_eq!(
        ids,
        [protocol::VIRTIO_ID_NN.to_string().as_str()],
        "virtio_nn_glue.c's VIRTIO_ID_NN"
    );
    assert!(
        glue.contains(&format!(".name = \"{}\",", dev_abi::DEVICE_NAME)),
        "virtio_nn_glue.c's misc device name is not dev_abi::DEVICE_NAME"
    );
}

#[test]
fn uapi_header_matches_dev_abi() {
    let dir = scratch("uapi");
    let mut prog = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"neural_dev.h\"\n\
         #define P(k, fmt, v) printf(\"%s \" fmt \"\\n\", k, v)\n\
         int main(void)\n{\n\
         P(\"name\", \"%s\", NEURAL_DEV_NAME);\n\
         P(\"request_magic\", \"%lu\", (unsigned long)NEURAL_DEV_REQUEST_MAGIC);\n\
         P(\"null_magic\", \"%lu\", (unsigned long)NEURAL_DEV_NULL_MAGIC);\n\
         P(\"device_only_magic\", \"%lu\", (unsigned long)NEURAL_DEV_DEVICE_ONLY_MAGIC);\n\
         P(\"fallback_magic\", \"%lu\", (unsigned long)NEURAL_DEV_FALLBACK_MAGIC);\n\
         P(\"response_magic\", \"%lu\", (unsigned long)NEURAL_DEV_RESPONSE_MAGIC);\n\
         P(\"header_len\", \"%lu\", (unsigned long)NEURAL_DEV_HEADER_LEN);\n\
         P(\"max_write_len\", \"%lu\", (unsigned long)NEURAL_DEV_MAX_WRITE_LEN);\n\
         P(\"request_len\", \"%lu\", (unsigned long)NEURAL_DEV_REQUEST_LEN(3, 5));\n\
         P(\"response_len\", \"%lu\", (unsigned long)NEURAL_DEV_RESPONSE_LEN(3, 7));\n\
         P(\"sizeof.request\", \"%zu\", sizeof(struct neural_dev_request));\n\
         P(\"sizeof.response\", \"%zu\", sizeof(struct neural_dev_response));\n\
         P(\"request.inputs\", \"%zu\", offsetof(struct neural_dev_request, inputs));\n\
         P(\"response.outputs\", \"%zu\", offsetof(struct neural_dev_response, outputs));\n\
         P(\"sizeof.field\", \"%zu\", sizeof(((struct neural_dev_request *)0)->magic));\n",
    );
    for (part, fields) in [
        ("request", dev_abi::request::FIELDS),
        ("response", dev_abi::response::FIELDS),
    ] {
        for (name, _) in fields {
            prog += &format!(
                "P(\"{part}.{name}\", \"%zu\", offsetof(struct neural_dev_{part}, {name}));\n"
            );
        }
    }
    prog += "return 0;\n}\n";
    std::fs::write(dir.join("check.c"), prog).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    run(Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(repo().join("guest-driver/include"))
        .arg(dir.join("check.c"))
        .arg("-o")
        .arg(dir.join("check")));
    let got = pairs(&run(&mut Command::new(dir.join("check"))));
    let _ = std::fs::remove_dir_all(&dir);

    let r = Request {
        kind: Kind::Predict,
        num_samples: 3,
        in_dim: 5,
        timeout_ms: 0,
    };
    let a = dev_abi::Response {
        num_samples: 3,
        out_dim: 7,
        generation: 1,
    };
    let mut want: BTreeMap<String, String> = [
        ("name", dev_abi::DEVICE_NAME.to_string()),
        ("request_magic", dev_abi::REQUEST_MAGIC.to_string()),
        ("null_magic", dev_abi::NULL_MAGIC.to_string()),
        ("device_only_magic", dev_abi::DEVICE_ONLY_MAGIC.to_string()),
        (
            "fallback_magic",
            dev_abi::FALLBACK_RESPONSE_MAGIC.to_string(),
        ),
        ("response_magic", dev_abi::RESPONSE_MAGIC.to_string()),
        ("header_len", dev_abi::HEADER_LEN.to_string()),
        ("max_write_len", dev_abi::MAX_WRITE_LEN.to_string()),
        ("request_len", r.write_len().unwrap().to_string()),
        ("response_len", a.read_len().to_string()),
        ("sizeof.request", dev_abi::HEADER_LEN.to_string()),
        ("sizeof.response", dev_abi::HEADER_LEN.to_string()),
        ("request.inputs", dev_abi::HEADER_LEN.to_string()),
        ("response.outputs", dev_abi::HEADER_LEN.to_string()),
        ("sizeof.field", "4".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (part, fields) in [
        ("request", dev_abi::request::FIELDS),
        ("response", dev_abi::response::FIELDS),
    ] {
        for (name, off) in fields {
            want.insert(format!("{part}.{name}"), off.to_string());
        }
    }
    assert_eq!(got, want, "neural_dev.h vs nn_core::dev_abi");
}

/// The properties of `scripts/qemu.sh --print-device ARGS`.
fn qemu_device(args: &[&str]) -> BTreeMap<String, String> {
    let out = run(Command::new(repo().join("scripts/qemu.sh"))
        .arg("--print-device")
        .args(args));
    let mut parts = out.trim().split(',');
    let mut props = BTreeMap::from([(
        "driver".to_string(),
        parts.next().unwrap_or_default().to_string(),
    )]);
    for p in parts {
        let (k, v) = p.split_once('=').expect("prop=value");
        props.insert(k.to_string(), v.to_string());
    }
    props
}

#[test]
fn qemu_device_properties_come_from_the_protocol() {
    let props = qemu_device(&["--queues", "3", "--vq-size", "16"]);
    let want = |extra: &[(&str, String)]| {
        let mut m: BTreeMap<String, String> = [
            ("driver", "vhost-user-test-device-pci".to_string()),
            ("id", "nn0dev".to_string()),
            ("bus", "rp0".to_string()),
            ("chardev", "nn0".to_string()),
            ("virtio-id", protocol::VIRTIO_ID_NN.to_string()),
            ("config_size", protocol::CONFIG_SIZE.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        m.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
        m
    };
    // num_vqs: the request queues, then the event queue.
    assert_eq!(
        props,
        want(&[("num_vqs", "4".into()), ("vq_size", "16".into())])
    );
    assert_eq!(qemu_device(&[]), want(&[("num_vqs", "2".into())]));
}

/// Runs `code` with nnlib imported (from tests/avocado) and nnlib's
/// `MODEL_TOOL` set to this crate's `nn-model`.
fn nnlib(code: &str) -> String {
    let prelude = format!(
        "import sys\nsys.path.insert(0, {:?})\nimport nnlib\n",
        repo().join("tests/avocado").display().to_string()
    );
    run(Command::new("python3")
        .arg("-c")
        .arg(prelude + code)
        .env("VIRTIO_NN_MODEL_TOOL", env!("CARGO_BIN_EXE_nn-model")))
}

fn words(b: &[u8]) -> Vec<String> {
    b.chunks_exact(4)
        .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]).to_string())
        .collect()
}

#[test]
fn nnlib_builds_what_dev_abi_defines() {
    let out = nnlib(
        "a = nnlib.abi()\n\
         print('virtio_id', a['virtio_id'])\n\
         print('config_size', a['config_size'])\n\
         print('request', *nnlib.dev_request(5, [7, 8], num_samples=3, timeout_ms=300))\n\
         print('null', *nnlib.dev_request(2, [], magic=nnlib.dev_magic('null')))\n\
         head, outs = nnlib.dev_response([nnlib.dev_magic('response'), 2, 4, 9, 11, 12])\n\
         print('response', head['magic'], head['num_samples'], head['out_dim'], \
               head['generation'], *outs)\n\
         print('proc_max', a['proc']['max_write_len'])\n\
         print('whole_range', *a['proc']['whole_range'])\n\
         print('dev_path', a['dev']['path'])\n",
    );
    let got = pairs(&out);
    let req = Request {
        kind: Kind::Predict,
        num_samples: 3,
        in_dim: 5,
        timeout_ms: 300,
    };
    let null = Request {
        kind: Kind::Null,
        num_samples: 1,
        in_dim: 2,
        timeout_ms: 0,
    };
    let resp = dev_abi::Response {
        num_samples: 2,
        out_dim: 4,
        generation: 9,
    };
    let (wmin, wmax) = nn_core::proc_text::Format::Whole.range();
    let want: BTreeMap<String, String> = [
        ("virtio_id", protocol::VIRTIO_ID_NN.to_string()),
        ("config_size", protocol::CONFIG_SIZE.to_string()),
        ("request", words(&req.header()).join(" ") + " 7 8"),
        ("null", words(&null.header()).join(" ")),
        ("response", words(&resp.header()).join(" ") + " 11 12"),
        ("proc_max", nn_core::proc_text::MAX_WRITE_LEN.to_string()),
        ("whole_range", format!("{wmin} {wmax}")),
        ("dev_path", format!("/dev/{}", dev_abi::DEVICE_NAME)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(got, want, "nnlib (through nn-model abi) vs nn_core");
}

#[test]
fn nnlib_device_add_is_qemu_sh_device() {
    let out = nnlib(
        "import json\n\
         g = nnlib.Guest.__new__(nnlib.Guest)\n\
         g.queues, g.vq_size = 2, 8\n\
         for k, v in sorted(g.device_props().items()):\n    print(k, json.dumps(v))\n",
    );
    // QMP wants the numbers as JSON numbers, the names as strings.
    let want: BTreeMap<String, String> = qemu_device(&["--queues", "2", "--vq-size", "8"])
        .into_iter()
        .map(|(k, v)| {
            let json = if v.bytes().all(|b| b.is_ascii_digit()) {
                v
            } else {
                format!("\"{v}\"")
            };
            (k, json)
        })
        .collect();
    assert_eq!(pairs(&out), want);
}

/// The files that may not hold a literal copy of a /dev magic or of the
/// device id: every script, test and driver source outside nn-core (whose
/// `protocol.rs`/`dev_abi.rs` are the definitions), except the two copies
/// checked above (the C glue's id, the uapi header).
fn code_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !name.starts_with('.') && !["target", "nn-core", "weights", "fuzz"].contains(&&*name)
            {
                code_files(&p, out);
            }
        } else if [".rs", ".py", ".sh", ".c", ".h"]
            .iter()
            .any(|x| name.ends_with(x))
            && !["virtio_nn_glue.c", "neural_dev.h"].contains(&&*name)
            && !name.ends_with(".mod.c")
        {
            out.push(p);
        }
    }
}

#[test]
fn no_copy_of_the_magics_or_the_device_id() {
    let mut files = Vec::new();
    code_files(&repo(), &mut files);
    assert!(
        files
            .iter()
            .any(|f| f.ends_with("tests/avocado/test_nn.py")),
        "the scan found the tests"
    );
    let mut forms = Vec::new();
    for m in [
        dev_abi::REQUEST_MAGIC,
        dev_abi::NULL_MAGIC,
        dev_abi::RESPONSE_MAGIC,
        dev_abi::DEVICE_ONLY_MAGIC,
        dev_abi::FALLBACK_RESPONSE_MAGIC,
    ] {
        forms.push(format!("{m:#x}"));
        forms.push(m.to_string());
    }
    let id = protocol::VIRTIO_ID_NN.to_string();
    let mut found = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f)
            .unwrap_or_default()
            .to_lowercase();
        for form in &forms {
            if text.contains(form.as_str()) {
                found.push(format!("{}: {form}", f.display()));
            }
        }
        // `virtio-id=38`, `"virtio-id": 38`, `VIRTIO_ID = 38`, ...
        for key in ["virtio-id", "virtio_id"] {
            for (i, _) in text.match_indices(key) {
                let rest = text[i + key.len()..].trim_start_matches(['"', '\'', ':', '=', ' ']);
                if rest.starts_with(&id)
                    && !rest[id.len()..].starts_with(|c: char| c.is_ascii_digit())
                {
                    found.push(format!("{}: {key} {id}", f.display()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "copies of guest-facing constants (use nn-model abi, nnlib.abi() or \
         scripts/qemu.sh --print-device instead): {found:#?}"
    );
}
