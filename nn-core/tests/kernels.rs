// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Every SIMD kernel this machine runs gives the scalar reference's bits, on
//! random models and inputs, including saturating and extreme values.
//!
//! A kernel of this architecture that the CPU cannot run (AVX2 or AVX-512 on
//! x86-64, NEON on aarch64) fails `every_kernel_of_this_architecture_runs`
//! unless `NN_CORE_ALLOW_MISSING_KERNELS` names it; that test lists the
//! kernels that ran and those that could not.

use std::io::Write;

use nn_core::{Activation, Kernel, Layer, Mlp, Scratch};
use proptest::prelude::*;

/// Comma-separated kernel names that may be missing on this CPU (e.g.
/// `avx512` on an x86-64 machine without AVX-512); without it every kernel
/// of the architecture must run.
const ALLOW_MISSING: &str = "NN_CORE_ALLOW_MISSING_KERNELS";

/// The SIMD kernels of the architecture the tests are built for.
const ARCH_KERNELS: &[Kernel] = if cfg!(target_arch = "x86_64") {
    &[Kernel::Avx2, Kernel::Avx512]
} else if cfg!(target_arch = "aarch64") {
    &[Kernel::Neon]
} else {
    &[]
};

/// Kernels to compare with the reference on this machine.
fn simd_kernels() -> Vec<Kernel> {
    Kernel::ALL
        .into_iter()
        .filter(|k| *k != Kernel::Scalar && k.is_supported())
        .collect()
}

fn names(ks: &[Kernel]) -> String {
    if ks.is_empty() {
        return "none".into();
    }
    ks.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

#[test]
fn every_kernel_of_this_architecture_runs() {
    let allowed: Vec<Kernel> = std::env::var(ALLOW_MISSING)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<Kernel>()
                .ok()
                .filter(|k| ARCH_KERNELS.contains(k))
                .unwrap_or_else(|| {
                    panic!(
                        "{ALLOW_MISSING}: `{s}` is not a SIMD kernel of this architecture ({})",
                        names(ARCH_KERNELS)
                    )
                })
        })
        .collect();
    let ran = simd_kernels();
    let missing: Vec<Kernel> = ARCH_KERNELS
        .iter()
        .copied()
        .filter(|k| !k.is_supported())
        .collect();
    // Straight to stderr, not through the test harness's capture: the list
    // is part of every run's output, not only of a failing one.
    let _ = writeln!(
        std::io::stderr(),
        "nn-core kernels compared with the scalar reference: {}; cannot run on this CPU: {}{}",
        names(&ran),
        names(&missing),
        if allowed.is_empty() {
            String::new()
        } else {
            format!(" ({ALLOW_MISSING} allows: {})", names(&allowed))
        }
    );
    let unallowed: Vec<Kernel> = missing
        .into_iter()
        .filter(|k| !allowed.contains(k))
        .collect();
    assert!(
        unallowed.is_empty(),
        "this CPU cannot run the {} kernel(s), so they were not tested; \
         set {ALLOW_MISSING}={} to accept that on this machine",
        names(&unallowed),
        unallowed
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(",")
    );
}

/// A value: small Q16.16 numbers most of the time, but also any i32 and the
/// extremes (which saturate and make the accumulation wrap).
fn value() -> impl Strategy<Value = i32> {
    prop_oneof![
        4 => -(4 << 16)..(4 << 16),
        2 => any::<i32>(),
        1 => prop::sample::select(vec![i32::MIN, i32::MAX, i32::MIN + 1, i32::MAX - 1, 0, -1, 1]),
    ]
}

fn model(max_layers: usize, max_width: usize) -> impl Strategy<Value = Mlp> {
    prop::collection::vec(1..=max_width, 2..=max_layers + 1)
        .prop_flat_map(|dims| {
            let layers: Vec<_> = dims
                .windows(2)
                .map(|d| {
                    let (i, o) = (d[0], d[1]);
                    (
                        Just((i, o)),
                        prop::collection::vec(value(), i * o),
                        prop::collection::vec(value(), o),
                        any::<bool>(),
                    )
                })
                .collect();
            layers
        })
        .prop_map(|layers| {
            let layers = layers
                .into_iter()
                .map(|((i, o), w, b, relu)| {
                    let act = if relu {
                        Activation::Relu
                    } else {
                        Activation::Identity
                    };
                    Layer::new(i, o, w, b, act).unwrap()
                })
                .collect();
            Mlp::new(layers).unwrap()
        })
}

fn model_and_inputs() -> impl Strategy<Value = (Mlp, Vec<i32>)> {
    (model(4, 40), 1..=20usize).prop_flat_map(|(m, n)| {
        let len = n * m.input_dim();
        (Just(m), prop::collection::vec(value(), len))
    })
}

fn reference(m: &Mlp, x: &[i32]) -> Vec<i32> {
    let n = x.len() / m.input_dim();
    let mut y = vec![0; n * m.output_dim()];
    m.predict_batch_reference(x, &mut y, &mut Scratch::default())
        .unwrap();
    y
}

fn check_all_kernels(m: &Mlp, x: &[i32]) -> Result<(), TestCaseError> {
    let want = reference(m, x);
    let n = x.len() / m.input_dim();
    for k in simd_kernels() {
        let mk = m.clone().with_kernel(k).unwrap();
        prop_assert_eq!(mk.kernel(), k);
        let mut y = vec![0; n * m.output_dim()];
        mk.predict_batch(x, &mut y, &mut Scratch::default())
            .unwrap();
        prop_assert_eq!(&y, &want, "kernel {} (batch of {})", k, n);
        // Single samples, with a reused scratch.
        let mut s = mk.scratch();
        for (xs, ws) in x.chunks(m.input_dim()).zip(want.chunks(m.output_dim())) {
            let mut y1 = vec![0; m.output_dim()];
            mk.predict_batch(xs, &mut y1, &mut s).unwrap();
            prop_assert_eq!(&y1[..], ws, "kernel {} (single sample)", k);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn simd_equals_scalar((m, x) in model_and_inputs()) {
        check_all_kernels(&m, &x)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn simd_equals_scalar_on_wide_layers(
        (m, x) in (model(2, 130), 1..=17usize).prop_flat_map(|(m, n)| {
            let len = n * m.input_dim();
            (Just(m), prop::collection::vec(value(), len))
        })
    ) {
        check_all_kernels(&m, &x)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3))]

    /// Wide models take the batch path's larger sample blocks (and several
    /// of them per call).
    #[test]
    fn simd_equals_scalar_on_wide_models_and_big_batches(
        (m, x) in (model(2, 280).prop_filter("wide", |m| m.dims().iter().any(|&d| d >= 250)), 65..=140usize)
            .prop_flat_map(|(m, n)| {
                let len = n * m.input_dim();
                (Just(m), prop::collection::vec(value(), len))
            })
    ) {
        check_all_kernels(&m, &x)?;
    }
}

#[test]
fn extremes_saturate_and_wrap_identically() {
    // Every product is 2^62; sums of them wrap modulo 2^64.
    for width in [1, 2, 3, 4, 5, 7, 8, 9, 16, 33] {
        for &(wv, xv, bv) in &[
            (i32::MIN, i32::MIN, i32::MAX),
            (i32::MAX, i32::MAX, i32::MIN),
            (i32::MIN, i32::MAX, 0),
            (i32::MAX, i32::MIN, -1),
        ] {
            for act in [Activation::Identity, Activation::Relu] {
                let l0 = Layer::new(width, 12, vec![wv; width * 12], vec![bv; 12], act).unwrap();
                let l1 =
                    Layer::new(12, 3, vec![xv; 36], vec![bv; 3], Activation::Identity).unwrap();
                let m = Mlp::new(vec![l0, l1]).unwrap();
                let x = vec![xv; width * 11];
                check_all_kernels(&m, &x).unwrap();
            }
        }
    }
}

#[test]
fn kernels_are_named_detected_and_forced() {
    for k in Kernel::ALL.into_iter().chain([Kernel::Auto]) {
        assert_eq!(k.name().parse::<Kernel>().unwrap(), k);
    }
    assert!("avx1024".parse::<Kernel>().is_err());
    assert!(Kernel::Scalar.is_supported());
    let detected = Kernel::detect();
    assert!(detected.is_supported() && detected != Kernel::Auto);
    let m = Mlp::new(vec![Layer::new(
        2,
        1,
        vec![1, 2],
        vec![0],
        Activation::Identity,
    )
    .unwrap()])
    .unwrap();
    assert_eq!(
        m.clone().with_kernel(Kernel::Auto).unwrap().kernel(),
        detected
    );
    assert_eq!(
        m.clone().with_kernel(Kernel::Scalar).unwrap().kernel(),
        Kernel::Scalar
    );
    for k in Kernel::ALL {
        assert_eq!(m.clone().with_kernel(k).is_ok(), k.is_supported(), "{k}");
    }
    #[cfg(target_arch = "x86_64")]
    assert!(m.clone().with_kernel(Kernel::Neon).is_err());
    assert_eq!(Mlp::argmax(&[3, 9, -1, 9]), Some(1));
    assert_eq!(Mlp::argmax(&[]), None);
}
