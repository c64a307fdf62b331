// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! Test support (feature `test-utils`; not part of the daemon): a small
//! model and device for the unit tests and the fuzz targets, and, for the
//! tests that drive the real daemon process over its sockets, a vhost-user
//! frontend ([`frontend`]) and a process handle ([`daemon`]).

use crate::device::NnDevice;
use nn_core::fixed::ONE;
use nn_core::{Activation, Layer, Mlp, Model};

#[cfg(feature = "test-utils")]
pub mod daemon;
#[cfg(feature = "test-utils")]
pub mod frontend;

/// A 3 -> 2 (ReLU) -> 2 (identity) model with small whole-number weights,
/// small enough to check answers by hand.
pub fn small_model(name: &str) -> Model {
    let l0 = Layer::new(
        3,
        2,
        vec![ONE, 2 * ONE, -ONE, -ONE, ONE, ONE / 2],
        vec![0, ONE],
        Activation::Relu,
    )
    .expect("valid layer");
    let l1 = Layer::new(
        2,
        2,
        vec![ONE, ONE, 2 * ONE, -ONE],
        vec![0, 0],
        Activation::Identity,
    )
    .expect("valid layer");
    Model::new(Mlp::new(vec![l0, l1]).expect("valid chain"), name)
}

/// A device (one request queue) serving [`small_model`].
pub fn small_device(name: &str) -> NnDevice {
    NnDevice::new(small_model(name), name.into(), 1).expect("device")
}
