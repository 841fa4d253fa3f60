//! What the commands print, written so that no write error can end the process.
//!
//! `println!` panics when standard output is a closed pipe (`wgbroker explain ... | head -1`) or
//! a full disk (`> /dev/full`), and with the release profile's `panic = "abort"` the process then
//! dies of SIGABRT (exit 134) instead of exiting with the status scripts depend on. The commands
//! print through [`outln!`] instead, which keep the first error and skip every later
//! write, and `main` ends with [`finish`], whose answer `cli` turns into the exit status:
//!
//! * a closed pipe (`EPIPE`): the reader wanted no more; the command exits quietly with the
//!   status it decided, as if its output had been read (so `explain ... | head -1` tells allowed
//!   from denied whether or not `head` was gone before the last line);
//! * any other error (`ENOSPC`, `EIO`, ...): `cli` prints one line on standard error and exits
//!   `EXIT_IOERR` (74).
//!
//! [`errln!`] / [`err!`] write to standard error and ignore errors: with standard error gone there
//! is nowhere left to report anything, and the exit status still says what happened. (A closed
//! descriptor, `2>&-`, is no error at all: the standard library treats `EBADF` there as success.)
//!
//! The first error is process-wide state, like standard output itself.

use std::fmt;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The first error writing to standard output, if any.
static FAILED: Mutex<Option<io::Error>> = Mutex::new(None);

fn failed() -> MutexGuard<'static, Option<io::Error>> {
    FAILED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes to standard output unless an earlier write failed; keeps the first error.
pub fn write_out(args: fmt::Arguments<'_>) {
    let mut failed = failed();
    if failed.is_none() {
        if let Err(e) = io::stdout().lock().write_fmt(args) {
            *failed = Some(e);
        }
    }
}

/// [`write_out`] for bytes.
pub fn write_out_bytes(bytes: &[u8]) {
    let mut failed = failed();
    if failed.is_none() {
        if let Err(e) = io::stdout().lock().write_all(bytes) {
            *failed = Some(e);
        }
    }
}

/// Writes to standard error; errors are ignored (see the module documentation).
pub fn write_err(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// Flushes standard output; the first error writing it, if any — except a closed pipe, which is
/// no error: the reader wanted no more.
pub fn finish() -> io::Result<()> {
    let mut failed = failed();
    if failed.is_none() {
        if let Err(e) = io::stdout().lock().flush() {
            *failed = Some(e);
        }
    }
    match failed.take() {
        Some(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// `println!` that never panics: see [`write_out`].
macro_rules! outln {
    () => {
        $crate::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` that never panics: see [`write_err`].
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::output::write_err(format_args!($($arg)*))
    };
}

/// `eprintln!` that never panics: see [`write_err`].
macro_rules! errln {
    () => {
        $crate::output::write_err(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_err(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub(crate) use {err, errln, outln};
