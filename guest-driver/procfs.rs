// SPDX-License-Identifier: GPL-2.0

//! `/proc/neural_network/predict` and `/proc/neural_network/predict_q16`.
//!
//! A write parses the values (see [`crate::proc_text`]), runs the prediction on
//! the current device and returns the byte count; on any error nothing
//! changes. A read returns the answer of the last successful write on the
//! same open file or, if that file made none, the last answer made in the
//! caller's session by the caller's euid (see [`crate::session`]); `ENODATA`
//! if there is none.
//! A write resets the file position, so the next read starts at the new
//! answer's beginning.
//!
//! The entries live as long as the module and look up the current device at
//! each write (`ENODEV` when there is none), so they survive unplug/replug.

use crate::fileio;
use crate::glue;
use crate::proc_text::{self, Format};
use crate::request::Deadline;
use crate::session::{self, Answer, Session};
use core::ffi::c_void;
use core::ptr;
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings;
use kernel::ffi::{c_char, c_int};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::{c_str, error::from_result};

/// `pde_data` values of the two entries (never null).
const PDE_WHOLE: usize = 1;
const PDE_Q16: usize = 2;

/// The per-open-file state (`file->private_data`).
#[pin_data]
struct OpenFile {
    format: Format,
    #[pin]
    answers: Mutex<FileAnswers>,
}

struct FileAnswers {
    /// The answer of the last successful write on this file.
    own: Option<Arc<Answer>>,
    /// The session's answer this file is being read from (taken at a read
    /// at position 0, so that partial reads see one answer).
    session: Option<Arc<Answer>>,
}

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

/// The open file of `file`.
///
/// # Safety
///
/// `file` must be a file opened by [`virtio_nn_proc_open`] and not yet
/// released.
unsafe fn open_file<'a>(file: *mut bindings::file) -> &'a OpenFile {
    // SAFETY: `private_data` holds the reference from `open` until release.
    unsafe { &*(*file).private_data.cast::<OpenFile>() }
}

fn write(
    of: &OpenFile,
    buf: *const c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> Result<isize> {
    if count == 0 || count > proc_text::MAX_WRITE_LEN {
        return Err(EINVAL);
    }
    let text = fileio::copy_write(buf, count)?;
    let n = proc_text::count_fields(&text);
    if n == 0 || n > crate::protocol::MAX_DIM as usize {
        return Err(EINVAL);
    }
    let mut inputs = KVec::from_elem(0i32, n, GFP_KERNEL_ACCOUNT)?;
    proc_text::parse_values(&text, of.format, &mut inputs).map_err(|_| EINVAL)?;

    let outputs = crate::predict::run(&inputs, 1, None, &Deadline::module_default())?;
    let globals = crate::globals()?;

    let mut out = KVec::from_elem(
        0u8,
        proc_text::formatted_len(outputs.len()),
        GFP_KERNEL_ACCOUNT,
    )?;
    let len = proc_text::format_values(&outputs, of.format, &mut out);
    // SAFETY: `len <= out.len()`, so the kept bytes are initialised; `u8`
    // needs no drop.
    unsafe { out.set_len(len) };
    let answer = Arc::new(Answer { text: out }, GFP_KERNEL_ACCOUNT)?;

    if let Some(s) = Session::current() {
        globals.sessions.lock()[table_index(of.format)].insert(
            s,
            session::current_euid(),
            answer.clone(),
        )?;
    }
    {
        let mut answers = of.answers.lock();
        answers.own = Some(answer);
        answers.session = None;
    }
    fileio::written(count, pos)
}

fn table_index(format: Format) -> usize {
    match format {
        Format::Whole => 0,
        Format::Q16 => 1,
    }
}

fn read(
    of: &OpenFile,
    buf: *mut c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> Result<isize> {
    let answer = {
        let mut answers = of.answers.lock();
        if let Some(own) = &answers.own {
            own.clone()
        } else {
            if fileio::position(pos) == 0 || answers.session.is_none() {
                let globals = crate::globals()?;
                answers.session = Session::current().and_then(|s| {
                    globals.sessions.lock()[table_index(of.format)].get(&s, session::current_euid())
                });
            }
            answers
                .session
                .clone()
                .ok_or(Error::from_errno(-(bindings::ENODATA as i32)))?
        }
    };
    fileio::read_answer(&answer.text, buf, count, pos)
}

/// `proc_ops.proc_open`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_open(
    inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    from_result(|| {
        // SAFETY: `inode` is the entry's inode.
        let format = match unsafe { glue::virtio_nn_pde_data(inode) } as usize {
            PDE_Q16 => Format::Q16,
            _ => Format::Whole,
        };
        let of = Arc::pin_init(
            pin_init!(OpenFile {
                format,
                answers <- new_mutex!(FileAnswers { own: None, session: None }, "virtio_nn_file"),
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `file` is being opened; the reference is dropped at release.
        unsafe { (*file).private_data = Arc::into_raw(of).cast_mut().cast() };
        Ok(0)
    })
}

/// `proc_ops.proc_release`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_release(
    _inode: *mut bindings::inode,
    file: *mut bindings::file,
) -> c_int {
    // SAFETY: `private_data` holds the reference from `open`; this is the
    // last use of the file.
    drop(unsafe { Arc::from_raw((*file).private_data.cast::<OpenFile>()) });
    0
}

/// `proc_ops.proc_write`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_write(
    file: *mut bindings::file,
    buf: *const c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: The VFS calls this on a file opened by `virtio_nn_proc_open`.
    let of = unsafe { open_file(file) };
    from_result(|| write(of, buf, count, pos))
}

/// `proc_ops.proc_read`.
#[no_mangle]
pub(crate) extern "C" fn virtio_nn_proc_read(
    file: *mut bindings::file,
    buf: *mut c_char,
    count: usize,
    pos: *mut bindings::loff_t,
) -> isize {
    // SAFETY: The VFS calls this on a file opened by `virtio_nn_proc_open`.
    let of = unsafe { open_file(file) };
    from_result(|| read(of, buf, count, pos))
}
