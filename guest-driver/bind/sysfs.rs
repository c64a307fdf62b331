// SPDX-License-Identifier: GPL-2.0

//! `/sys/kernel/neural_network/` and the `show` entry points of its files
//! and of the device's own sysfs directory (attribute tables in the C
//! glue); the text comes from [`crate::sysfs`].

use super::glue;
use super::virtio::VirtioDevice;
use crate::sysfs;
use kernel::bindings;
use kernel::c_str;
use kernel::error::from_result;
use kernel::ffi::{c_char, c_int};
use kernel::page::PAGE_SIZE;
use kernel::prelude::*;

/// `/sys/kernel/neural_network`; removed on drop.
pub(crate) struct SysfsDir {
    kobj: *mut bindings::kobject,
}

// SAFETY: The kobject pointer is only used to remove it, from any thread.
unsafe impl Send for SysfsDir {}
// SAFETY: `SysfsDir` has no `&self` methods.
unsafe impl Sync for SysfsDir {}

impl SysfsDir {
    /// Creates `/sys/kernel/neural_network/{model_info,performance,health}`.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The name is a static C string; `kernel_kobj` is set up at
        // boot.
        let kobj = unsafe {
            bindings::kobject_create_and_add(
                c_str!("neural_network").as_char_ptr(),
                bindings::kernel_kobj,
            )
        };
        if kobj.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: `kobj` is live.
        let ret = unsafe { glue::virtio_nn_sysfs_create_file(kobj) };
        if ret != 0 {
            // SAFETY: `kobj` is ours.
            unsafe { bindings::kobject_put(kobj) };
            return Err(Error::from_errno(ret));
        }
        Ok(Self { kobj })
    }
}

impl Drop for SysfsDir {
    fn drop(&mut self) {
        // SAFETY: `kobj` is live and has the attributes. Removing the files
        // waits for running `show` calls.
        unsafe {
            glue::virtio_nn_sysfs_remove_file(self.kobj);
            bindings::kobject_put(self.kobj);
        }
    }
}

/// The page a sysfs `show` writes into.
///
/// # Safety
///
/// `buf` is the buffer sysfs passed to `show`: `PAGE_SIZE` bytes, ours for
/// the call.
unsafe fn page<'a>(buf: *mut c_char) -> &'a mut [u8] {
    // SAFETY: Guaranteed by the caller.
    unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), PAGE_SIZE) }
}

/// `show` of `model_info`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_model_info_show(buf: *mut c_char) -> isize {
    // SAFETY: Called by sysfs with its page.
    let out = unsafe { page(buf) };
    from_result(|| sysfs::model_info(out))
}

/// `show` of `performance`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_performance_show(buf: *mut c_char) -> isize {
    // SAFETY: Called by sysfs with its page.
    let out = unsafe { page(buf) };
    from_result(|| sysfs::performance(out))
}

/// `show` of `health`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_health_show(buf: *mut c_char) -> isize {
    // SAFETY: Called by sysfs with its page.
    let out = unsafe { page(buf) };
    from_result(|| sysfs::health(out))
}

/// `show` of the one-value files in
/// `/sys/bus/virtio/devices/virtioN/neural_network/` (`attr`: `enum
/// virtio_nn_dev_attr` of `virtio_nn_glue.h`).
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_dev_attr_show(
    vdev: *mut bindings::virtio_device,
    attr: c_int,
    buf: *mut c_char,
) -> isize {
    // SAFETY: Called by sysfs with its page.
    let out = unsafe { page(buf) };
    // SAFETY: sysfs calls `show` for a bound device.
    let Some(vdev) = (unsafe { VirtioDevice::from_raw(vdev) }) else {
        return EINVAL.to_errno() as isize;
    };
    // SAFETY: The driver core adds these files only after a successful probe
    // and removes them (waiting for running `show` calls) before `remove`
    // takes the driver data.
    let Some(dev) = (unsafe { vdev.drvdata() }) else {
        return ENODEV.to_errno() as isize;
    };
    from_result(|| sysfs::dev_attr(&dev, attr, out))
}
