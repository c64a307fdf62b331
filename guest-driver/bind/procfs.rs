// SPDX-License-Identifier: GPL-2.0

//! `/proc/neural_network` and its two entries (their `proc_ops` are in the
//! C glue, the entry points in [`super::file`]).

use super::glue;
use crate::procfs::{PDE_Q16, PDE_WHOLE};
use core::ffi::c_void;
use core::ptr;
use kernel::bindings;
use kernel::c_str;
use kernel::prelude::*;

/// `/proc/neural_network` and its entries; removed on drop.
pub(crate) struct ProcEntries {
    dir: *mut bindings::proc_dir_entry,
}

// SAFETY: The entry pointer is only used to remove the entries, from any
// thread.
unsafe impl Send for ProcEntries {}
// SAFETY: `ProcEntries` has no `&self` methods.
unsafe impl Sync for ProcEntries {}

impl ProcEntries {
    /// Creates `/proc/neural_network/{predict,predict_q16}`, mode 0666.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: The name is a static C string; null means `/proc`.
        let dir = unsafe {
            bindings::proc_mkdir(c_str!("neural_network").as_char_ptr(), ptr::null_mut())
        };
        if dir.is_null() {
            return Err(ENOMEM);
        }
        let this = Self { dir };
        for (name, data) in [
            (c_str!("predict"), PDE_WHOLE),
            (c_str!("predict_q16"), PDE_Q16),
        ] {
            // SAFETY: `dir` is live; the name is static; the proc_ops table
            // is a static in the glue.
            let pde = unsafe {
                bindings::proc_create_data(
                    name.as_char_ptr(),
                    0o666,
                    this.dir,
                    &glue::virtio_nn_proc_ops,
                    data as *mut c_void,
                )
            };
            if pde.is_null() {
                return Err(ENOMEM);
            }
        }
        Ok(this)
    }
}

impl Drop for ProcEntries {
    fn drop(&mut self) {
        // SAFETY: `dir` is live. This waits for the running callbacks and
        // releases the files still open.
        unsafe { bindings::proc_remove(self.dir) };
    }
}
