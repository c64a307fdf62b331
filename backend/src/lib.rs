// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! vhost-user-nn: the vhost-user daemon of the virtio-nn device.
//!
//! * [`device`]: the device logic — served model, config space, and one
//!   descriptor chain in, one response out.
//! * [`vhu_nn`]: the `VhostUserBackend` implementation and queue loop.
//!
//! The binary (`main.rs`) holds the command line and the serve loop.

pub mod device;
pub mod vhu_nn;
