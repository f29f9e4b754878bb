//! The C ABI of the memory history and snapshots (declared in
//! `include/graphalloc.h`): start and stop the history, set the calling
//! thread's context string, write a snapshot in PyTorch's pickle format or
//! as HTML, and write the history as a replay trace.
//!
//! The rules of the boundary are those of [`crate::ffi`]: no panic crosses
//! it, errors are `-1` with the reason in [`super::graphalloc_last_error`].

use super::{allocator, ffi_call, Log};
use std::ffi::{c_char, c_int, CStr};
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

/// A C string argument as UTF-8, or why not.
///
/// # Safety
/// `text` is null or a NUL-terminated string valid for the call.
unsafe fn text_arg<'a>(text: *const c_char, what: &str) -> Result<Option<&'a str>, String> {
    if text.is_null() {
        return Ok(None);
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string
    // that stays valid for the call.
    let text = unsafe { CStr::from_ptr(text) };
    text.to_str()
        .map(Some)
        .map_err(|_| format!("{what} is not valid UTF-8"))
}

/// A required path argument: any bytes but NUL, as the OS takes them (a
/// file name need not be UTF-8).
///
/// # Safety
/// As [`text_arg`].
unsafe fn path_arg<'a>(path: *const c_char) -> Result<&'a Path, String> {
    if path.is_null() {
        return Err("the path is null".into());
    }
    // SAFETY: non-null, and the caller guarantees a NUL-terminated string
    // that stays valid for the call.
    let bytes = unsafe { CStr::from_ptr(path) }.to_bytes();
    Ok(Path::new(std::ffi::OsStr::from_bytes(bytes)))
}

/// Starts (or resizes) the memory history: the last `capacity` events
/// (1 to 2^26) are kept from now on. Returns 0, or -1 on error.
#[no_mangle]
pub extern "C" fn graphalloc_history_start(capacity: usize) -> c_int {
    ffi_call("graphalloc_history_start", -1, Log::Quiet, || {
        let alloc = allocator()?;
        alloc.record_history(capacity).map_err(|e| e.to_string())?;
        Ok(0)
    })
}

/// Stops recording (the events kept stay readable). Returns 0, or -1.
#[no_mangle]
pub extern "C" fn graphalloc_history_stop() -> c_int {
    ffi_call("graphalloc_history_stop", -1, Log::Quiet, || {
        allocator()?.stop_history();
        Ok(0)
    })
}

/// Forgets the events kept. Returns 0, or -1.
#[no_mangle]
pub extern "C" fn graphalloc_history_clear() -> c_int {
    ffi_call("graphalloc_history_clear", -1, Log::Quiet, || {
        allocator()?.clear_history();
        Ok(0)
    })
}

/// The number of events kept, or -1.
#[no_mangle]
pub extern "C" fn graphalloc_history_len() -> i64 {
    ffi_call("graphalloc_history_len", -1, Log::Quiet, || {
        let n = allocator()?.history().len();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    })
}

/// Makes each event capture a Rust backtrace (nonzero) or not (0).
/// Returns 0, or -1.
#[no_mangle]
pub extern "C" fn graphalloc_history_set_backtraces(enabled: c_int) -> c_int {
    ffi_call("graphalloc_history_set_backtraces", -1, Log::Quiet, || {
        allocator()?.set_history_backtraces(enabled != 0);
        Ok(0)
    })
}

/// Sets the calling thread's context string (copied), carried by every
/// event the thread causes; null clears it. Returns 0, or -1 (not UTF-8).
///
/// # Safety
/// `context` is null or a NUL-terminated string valid for the call.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_history_set_context(context: *const c_char) -> c_int {
    ffi_call("graphalloc_history_set_context", -1, Log::Quiet, || {
        // SAFETY: the caller's contract, passed on.
        let context = unsafe { text_arg(context, "the context") }?;
        crate::history::set_context(context);
        Ok(0)
    })
}

/// Writes what `make` returns to `path`; returns the bytes written.
///
/// # Safety
/// `path` is a NUL-terminated string valid for the call.
unsafe fn write_snapshot(
    name: &str,
    path: *const c_char,
    make: impl FnOnce(&crate::history::Snapshot) -> Vec<u8>,
) -> i64 {
    ffi_call(name, -1, Log::Quiet, || {
        // SAFETY: the caller's contract, passed on.
        let path = unsafe { path_arg(path) }?;
        let bytes = make(&allocator()?.snapshot());
        std::fs::write(path, &bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
    })
}

/// Writes a snapshot of every segment and block, with the history, to
/// `path` in PyTorch's memory snapshot format (a pickle, as
/// `torch.cuda.memory._dump_snapshot` writes). Returns the bytes written,
/// or -1.
///
/// # Safety
/// `path` is a NUL-terminated string valid for the call.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_snapshot_pickle(path: *const c_char) -> i64 {
    // SAFETY: the caller's contract, passed on.
    unsafe { write_snapshot("graphalloc_snapshot_pickle", path, |s| s.to_pickle()) }
}

/// Writes a snapshot as a self-contained HTML page (reserved and allocated
/// bytes over the history, a map of the segments). Returns the bytes
/// written, or -1.
///
/// # Safety
/// `path` is a NUL-terminated string valid for the call.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_snapshot_html(path: *const c_char) -> i64 {
    // SAFETY: the caller's contract, passed on.
    unsafe {
        write_snapshot("graphalloc_snapshot_html", path, |s| {
            s.to_html().into_bytes()
        })
    }
}

/// Writes the history's allocations and free requests as a replay trace
/// (`replay` example, `--compare`), gzip'd when `path` ends in `.gz`.
/// Returns the number of trace events written, or -1.
///
/// # Safety
/// `path` is a NUL-terminated string valid for the call.
#[no_mangle]
pub unsafe extern "C" fn graphalloc_history_write_trace(path: *const c_char) -> i64 {
    ffi_call("graphalloc_history_write_trace", -1, Log::Quiet, || {
        // SAFETY: the caller's contract, passed on.
        let path = unsafe { path_arg(path) }?;
        let name = crate::replay::trace_name(path);
        let text = crate::history::to_trace_text(&name, &allocator()?.history());
        let events = text.lines().filter(|l| !l.starts_with('#')).count();
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(path)?;
            if path.as_os_str().as_bytes().ends_with(b".gz") {
                let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
                gz.write_all(text.as_bytes())?;
                gz.finish()?;
            } else {
                let mut file = file;
                file.write_all(text.as_bytes())?;
            }
            Ok(())
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(i64::try_from(events).unwrap_or(i64::MAX))
    })
}
