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

use crate::bind::kvec::truncate_bytes;
use crate::bind::sys::current_euid;
use crate::bind::user;
use crate::proc_text::{self, Format};
use crate::request::Deadline;
use crate::session::{Answer, Session};
use kernel::alloc::flags::GFP_KERNEL_ACCOUNT;
use kernel::bindings::{self, loff_t};
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserSliceReader, UserSliceWriter};

/// `pde_data` values of the two entries (never null).
pub(crate) const PDE_WHOLE: usize = 1;
pub(crate) const PDE_Q16: usize = 2;

/// The per-open-file state (`file->private_data`).
#[pin_data]
pub(crate) struct OpenFile {
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

/// A new open file (`open`) of the entry with `pde_data` `data`.
pub(crate) fn open(data: usize) -> Result<Arc<OpenFile>> {
    let format = match data {
        PDE_Q16 => Format::Q16,
        _ => Format::Whole,
    };
    Arc::pin_init(
        pin_init!(OpenFile {
            format,
            answers <- new_mutex!(FileAnswers { own: None, session: None }, "virtio_nn_file"),
        }),
        GFP_KERNEL,
    )
}

/// A `write()`: one prediction; returns once it is answered.
pub(crate) fn write(of: &OpenFile, data: UserSliceReader, pos: &mut loff_t) -> Result<isize> {
    let count = data.len();
    if count == 0 || count > proc_text::MAX_WRITE_LEN {
        return Err(EINVAL);
    }
    let text = user::copy_in(data)?;
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
    truncate_bytes(&mut out, len);
    let answer = Arc::new(Answer { text: out }, GFP_KERNEL_ACCOUNT)?;

    if let Some(s) = Session::current() {
        globals.sessions.lock()[table_index(of.format)].insert(
            s,
            current_euid(),
            answer.clone(),
        )?;
    }
    {
        let mut answers = of.answers.lock();
        answers.own = Some(answer);
        answers.session = None;
    }
    user::written(count, pos)
}

fn table_index(format: Format) -> usize {
    match format {
        Format::Whole => 0,
        Format::Q16 => 1,
    }
}

/// A `read()`: the file's own last answer, else its session's.
pub(crate) fn read(of: &OpenFile, out: UserSliceWriter, pos: &mut loff_t) -> Result<isize> {
    let answer = {
        let mut answers = of.answers.lock();
        if let Some(own) = &answers.own {
            own.clone()
        } else {
            if *pos == 0 || answers.session.is_none() {
                let globals = crate::globals()?;
                answers.session = Session::current().and_then(|s| {
                    globals.sessions.lock()[table_index(of.format)].get(&s, current_euid())
                });
            }
            answers
                .session
                .clone()
                .ok_or(Error::from_errno(-(bindings::ENODATA as i32)))?
        }
    };
    user::read_answer(&answer.text, out, pos)
}
