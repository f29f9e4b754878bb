//! The C ABI of the memory history and snapshots, called as C would call it
//! on the host backend (one test: the process-wide allocator is built once).

use graphalloc::ffi::history::*;
use graphalloc::ffi::{
    graphalloc_empty_cache, graphalloc_free, graphalloc_last_error, graphalloc_malloc,
};
use graphalloc::history::pickle;
use std::ffi::{CStr, CString};
use std::ptr::{null, null_mut};

/// `graphalloc_malloc` on the default stream of the host backend.
fn c_malloc(size: isize) -> *mut std::ffi::c_void {
    // SAFETY: the null stream handle is the legacy default stream, a
    // built-in handle every backend accepts.
    unsafe { graphalloc_malloc(size, 0, null_mut()) }
}

fn last_error() -> String {
    // SAFETY: a NUL-terminated string valid until this thread's next call.
    unsafe { CStr::from_ptr(graphalloc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn history_and_snapshots_through_the_c_abi() {
    std::env::set_var("GRAPHALLOC_CONF", "backend:host,host_capacity:1GiB");
    let dir = std::env::temp_dir().join(format!("graphalloc-ffi-history-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = |name: &str| CString::new(dir.join(name).to_str().unwrap()).unwrap();

    assert_eq!(graphalloc_history_start(0), -1);
    assert!(last_error().contains("history"), "{}", last_error());
    assert_eq!(graphalloc_history_start(1000), 0, "{}", last_error());
    let context = CString::new("step 1").unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { graphalloc_history_set_context(context.as_ptr()) },
        0
    );
    let p = c_malloc(3 << 20);
    assert!(!p.is_null(), "{}", last_error());
    // SAFETY: null clears the context.
    assert_eq!(unsafe { graphalloc_history_set_context(null()) }, 0);
    graphalloc_free(p, 3 << 20, 0, null_mut());
    assert!(graphalloc_history_len() >= 3);

    let pickle_path = path("s.pickle");
    // SAFETY: valid C strings.
    let written = unsafe { graphalloc_snapshot_pickle(pickle_path.as_ptr()) };
    assert!(written > 0, "{}", last_error());
    let bytes = std::fs::read(dir.join("s.pickle")).unwrap();
    assert_eq!(bytes.len() as i64, written);
    let value = pickle::read(&bytes).unwrap();
    let events = value.get("device_traces").unwrap().as_list().unwrap()[0]
        .as_list()
        .unwrap();
    let first_alloc = events
        .iter()
        .find(|e| e.get("action").unwrap().as_str() == Some("alloc"));
    let frames = first_alloc
        .unwrap()
        .get("frames")
        .unwrap()
        .as_list()
        .unwrap();
    assert_eq!(frames[0].get("name").unwrap().as_str(), Some("step 1"));

    // SAFETY: valid C strings.
    assert!(unsafe { graphalloc_snapshot_html(path("s.html").as_ptr()) } > 0);
    // SAFETY: valid C strings.
    let n = unsafe { graphalloc_history_write_trace(path("r.trace.gz").as_ptr()) };
    assert_eq!(n, 2, "{}", last_error());
    let trace = graphalloc::replay::Trace::from_path(dir.join("r.trace.gz")).unwrap();
    assert_eq!((trace.allocations(), trace.frees()), (1, 1));

    // Errors: a null path, a bad one, invalid UTF-8.
    // SAFETY: null is allowed (an error); the others are valid C strings.
    assert_eq!(unsafe { graphalloc_snapshot_pickle(null()) }, -1);
    assert!(last_error().contains("null"));
    let bad = path("no/such/dir/s.pickle");
    // SAFETY: a valid C string.
    assert_eq!(unsafe { graphalloc_snapshot_pickle(bad.as_ptr()) }, -1);
    let not_utf8 = CString::new(vec![0xff, 0xfe]).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(
        unsafe { graphalloc_history_set_context(not_utf8.as_ptr()) },
        -1
    );

    assert_eq!(graphalloc_history_stop(), 0);
    let before = graphalloc_history_len();
    let q = c_malloc(4096);
    graphalloc_free(q, 4096, 0, null_mut());
    assert_eq!(
        graphalloc_history_len(),
        before,
        "stopped: nothing recorded"
    );
    assert_eq!(graphalloc_history_set_backtraces(0), 0);
    assert_eq!(graphalloc_history_clear(), 0);
    assert_eq!(graphalloc_history_len(), 0);
    let _ = std::fs::remove_dir_all(&dir);
    // The process-wide allocator lives as long as the process: give its
    // cached segments back, so that a leak checker (Miri) finds nothing
    // held at exit.
    assert!(graphalloc_empty_cache() >= 0);
}
