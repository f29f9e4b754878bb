//! Adversarial calls of the C ABI on the host backend: extreme sizes and
//! indices, buffers too small or empty, calls from many threads at once,
//! calls from a thread's teardown, an out-of-memory observer that fails
//! again. Each must end in a clean error or the documented answer: never a
//! panic across the boundary, a hang or a write past the caller's buffer.
//!
//! The tests of this binary share one process-wide allocator (built once,
//! by whichever test comes first, from [`CONF`]) and run in parallel: each
//! asserts only on its own pools, recordings and pointers.

use graphalloc::ffi::history::*;
use graphalloc::ffi::plan::*;
use graphalloc::ffi::*;
use std::ffi::{c_void, CStr};
use std::ptr::{null, null_mut};
use std::sync::Once;

const CONF: &str = "backend:host,host_devices:2,host_capacity:256MiB";

fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("GRAPHALLOC_CONF", CONF);
        graphalloc_set_log_errors(0);
    });
    assert_eq!(graphalloc_device_count(), 2, "{}", last_error());
}

/// `graphalloc_malloc` on the host backend.
fn c_malloc(size: isize, device: i32) -> *mut c_void {
    // SAFETY: the null stream; host stream handles are checked tags.
    unsafe { graphalloc_malloc(size, device, null_mut()) }
}

fn last_error() -> String {
    // SAFETY: graphalloc_last_error returns a NUL-terminated string that
    // stays valid until this thread's next graphalloc call; copied now.
    unsafe { CStr::from_ptr(graphalloc_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// Runs `body(t)` on `n` threads at once, `t` from 0, and waits for them.
fn on_threads(n: usize, body: impl Fn(usize) + Sync) {
    std::thread::scope(|s| {
        for t in 0..n {
            let body = &body;
            s.spawn(move || body(t));
        }
    });
}

fn pool_stats(pool: u64) -> GraphallocPoolStats {
    let mut out = GraphallocPoolStats::default();
    // SAFETY: `out` is a valid, writable GraphallocPoolStats.
    let rc = unsafe { graphalloc_pool_stats(pool, &mut out) };
    assert_eq!(rc, 0, "{}", last_error());
    out
}

/// Sizes whose rounding to 512 B, to a segment or to a power of two could
/// overflow: each is refused with an error, on the cache, in graph mode on
/// a pool, and in a recording.
#[test]
fn huge_sizes_are_clean_errors() {
    setup();
    let sizes = [
        isize::MAX,
        isize::MAX - 1,
        isize::MAX - 511,
        isize::MAX / 2 + 1,
        1 << 62,
        (1 << 48) + 1,
    ];
    let check = |what: &str| {
        for size in sizes {
            let p = c_malloc(size, 1);
            assert!(p.is_null(), "{what}: malloc({size}) gave {p:?}");
            let e = last_error();
            assert!(!e.is_empty() && !e.contains("panicked"), "{what}: {e}");
        }
    };
    check("cache");
    let pool = graphalloc_pool_create(1);
    assert_ne!(pool, 0, "{}", last_error());
    assert_eq!(graphalloc_begin_graph_mode(pool), 0, "{}", last_error());
    check("graph mode");
    assert_eq!(graphalloc_end_graph_mode(), 0);
    assert_eq!(pool_stats(pool).live_blocks, 0);
    assert_eq!(graphalloc_pool_release(pool), 0);
}

/// `graphalloc_plan_record_allocations` writes at most `capacity` entries,
/// whatever the recording holds, and nothing with capacity 0.
#[test]
fn recorded_allocations_respect_the_capacity() {
    setup();
    // A stream of its own: recordings on the null stream of device 0 would
    // see other tests' allocations.
    let rec = graphalloc_plan_record_begin(1, null_mut());
    assert_ne!(rec, 0, "{}", last_error());
    let blocks: Vec<_> = (0..5).map(|i| c_malloc(4096 << i, 1)).collect();
    assert!(blocks.iter().all(|p| !p.is_null()), "{}", last_error());
    let n = graphalloc_plan_record_end(rec);
    assert!(n >= 5, "{n}: {}", last_error());
    let sentinel = GraphallocRecordedAlloc {
        size: 0xabab,
        stream: 0xabab,
        start: 0xabab,
        end: 0xabab,
    };
    for capacity in [0usize, 1, 2] {
        let mut out = [sentinel; 4];
        // SAFETY: `out` has room for 4 >= capacity entries.
        let got = unsafe { graphalloc_plan_record_allocations(rec, out.as_mut_ptr(), capacity) };
        assert_eq!(got, n, "{}", last_error());
        assert!(out[..capacity].iter().all(|a| *a != sentinel));
        assert!(
            out[capacity..].iter().all(|a| *a == sentinel),
            "capacity {capacity}: wrote past it"
        );
    }
    // SAFETY: null with capacity 0 is allowed.
    assert_eq!(
        unsafe { graphalloc_plan_record_allocations(rec, null_mut(), 0) },
        n
    );
    // SAFETY: null with a nonzero capacity is refused before any write.
    assert_eq!(
        unsafe { graphalloc_plan_record_allocations(rec, null_mut(), usize::MAX) },
        -1
    );
    assert!(last_error().contains("null out"), "{}", last_error());
    for p in blocks {
        graphalloc_free(p, 0, 0, null_mut());
    }
    assert_eq!(graphalloc_plan_record_release(rec), 0);
    assert_eq!(graphalloc_plan_record_release(rec), -1);
}

/// Planned pools from no recording, plan indices and history capacities at
/// the ends of their types, ids never handed out.
#[test]
fn extreme_indices_and_ids() {
    setup();
    // SAFETY: count 0 with a null array is allowed.
    let pool = unsafe { graphalloc_plan_pool_create(1, null(), 0) };
    if pool == 0 {
        assert!(!last_error().contains("panicked"), "{}", last_error());
    } else {
        assert_eq!(graphalloc_plan_start(pool, 0), -1);
        assert_eq!(graphalloc_plan_start(pool, usize::MAX), -1);
        assert!(!last_error().contains("panicked"), "{}", last_error());
        assert_eq!(graphalloc_pool_release(pool), 0);
    }
    let ids = [0u64, u64::MAX];
    // SAFETY: two readable u64.
    assert_eq!(
        unsafe { graphalloc_plan_pool_create(1, ids.as_ptr(), 2) },
        0
    );
    assert!(
        last_error().contains("unknown recording"),
        "{}",
        last_error()
    );
    // SAFETY: as above.
    assert_eq!(
        unsafe { graphalloc_plan_pool_create(i32::MIN, ids.as_ptr(), 0) },
        0
    );
    for id in [0, u64::MAX] {
        assert_eq!(graphalloc_plan_record_end(id), -1);
        assert_eq!(graphalloc_plan_record_release(id), -1);
        assert_eq!(graphalloc_plan_start(id, 0), -1);
        assert_eq!(graphalloc_pool_release(id), -1);
        assert_eq!(graphalloc_pool_reset(id), -1);
        assert_eq!(graphalloc_begin_graph_mode(id), -1);
        assert_eq!(
            graphalloc_plan_record_rename_stream(id, null_mut(), null_mut()),
            -1
        );
    }
    assert_eq!(graphalloc_plan_record_begin(2, null_mut()), 0);
    assert_eq!(graphalloc_plan_record_begin(-1, null_mut()), 0);
    assert_eq!(graphalloc_history_start(usize::MAX), -1);
    assert!(last_error().contains("history"), "{}", last_error());
}

/// A thread that ends while in graph mode (a C caller that never called
/// `graphalloc_end_graph_mode`) leaves the pool usable: its blocks free, and
/// the pool releases and resets.
#[test]
fn thread_exit_in_graph_mode() {
    setup();
    let pool = graphalloc_pool_create(1);
    assert_ne!(pool, 0, "{}", last_error());
    let p = std::thread::spawn(move || {
        assert_eq!(graphalloc_begin_graph_mode(pool), 0);
        assert_eq!(graphalloc_begin_graph_mode(pool), 0);
        c_malloc(8192, 1) as usize
    })
    .join()
    .unwrap() as *mut c_void;
    assert!(!p.is_null());
    assert_eq!(pool_stats(pool).live_blocks, 1);
    graphalloc_free(p, 0, 0, null_mut());
    assert_eq!(last_error(), "");
    assert_eq!(pool_stats(pool).live_blocks, 0);
    assert_eq!(graphalloc_pool_reset(pool), 0, "{}", last_error());
    assert_eq!(graphalloc_pool_release(pool), 0);
}

thread_local! {
    static LATE: Late = const { Late(std::cell::Cell::new(0)) };
}

/// A thread-local whose destructor allocates and frees through the C ABI,
/// as PyTorch does when a thread's cached tensors (cuBLAS workspaces) die
/// with it.
struct Late(std::cell::Cell<usize>);

impl Drop for Late {
    fn drop(&mut self) {
        let old = self.0.get() as *mut c_void;
        graphalloc_free(old, 0, 0, null_mut());
        let freed = last_error();
        let p = c_malloc(4096, 1);
        let malloc_error = last_error();
        graphalloc_free(p, 0, 0, null_mut());
        let freed_new = last_error();
        let ok = !p.is_null() && freed.is_empty() && freed_new.is_empty();
        RESULT
            .lock()
            .unwrap()
            .push(format!("{ok} [{freed}] [{malloc_error}] [{freed_new}]"));
    }
}

static RESULT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Calls from a thread-local destructor that runs after graphalloc's own
/// thread-locals are gone still allocate and free.
#[test]
fn calls_from_thread_teardown() {
    setup();
    std::thread::spawn(|| {
        // Registered first, so destroyed after graphalloc's thread-locals.
        LATE.with(|l| l.0.set(0));
        let p = c_malloc(4096, 1);
        assert!(!p.is_null(), "{}", last_error());
        LATE.with(|l| l.0.set(p as usize));
        // Touch the per-thread state of history, graph mode and errors.
        // SAFETY: a NUL-terminated string.
        unsafe { graphalloc_history_set_context(c"teardown".as_ptr()) };
        let pool = graphalloc_pool_create(1);
        assert_eq!(graphalloc_begin_graph_mode(pool), 0);
        assert_eq!(graphalloc_end_graph_mode(), 0);
        assert_eq!(graphalloc_pool_release(pool), 0);
    })
    .join()
    .unwrap();
    let result = RESULT.lock().unwrap().clone();
    assert_eq!(result.len(), 1, "{result:?}");
    assert!(result[0].starts_with("true"), "{result:?}");
}

/// Many threads creating, entering, allocating from and releasing pools,
/// and reading statistics, at once: every call succeeds and every pool
/// ends empty.
#[test]
fn many_threads_at_once() {
    setup();
    on_threads(8, |t| {
        for i in 0..200 {
            let device = ((t + i) % 2) as i32;
            let pool = graphalloc_pool_create(device);
            assert_ne!(pool, 0, "{}", last_error());
            assert_eq!(graphalloc_begin_graph_mode(pool), 0, "{}", last_error());
            let p = c_malloc(512 * (1 + i as isize % 7), device);
            assert!(!p.is_null(), "{}", last_error());
            assert_eq!(graphalloc_end_graph_mode(), 0);
            let q = c_malloc(700, 1 - device);
            assert!(!q.is_null(), "{}", last_error());
            let mut s = GraphallocStats::default();
            // SAFETY: `s` is writable.
            assert_eq!(unsafe { graphalloc_stats(&mut s) }, 0);
            assert_eq!(pool_stats(pool).live_blocks, 1);
            if i % 2 == 0 {
                assert_eq!(graphalloc_pool_release(pool), 0);
                graphalloc_free(p, 0, 0, null_mut());
            } else {
                graphalloc_free(p, 0, 0, null_mut());
                assert_eq!(graphalloc_pool_reset(pool), 0, "{}", last_error());
                assert_eq!(graphalloc_pool_release(pool), 0);
            }
            assert_eq!(last_error(), "");
            graphalloc_free(q, 0, 0, null_mut());
            assert_eq!(last_error(), "");
        }
    });
}

/// A path that is not UTF-8 is still a path on Linux (a file name from a
/// latin-1 directory; Python hands `os.fsencode` of it): snapshots and
/// traces are written there, not refused.
#[test]
fn paths_need_not_be_utf8() {
    use std::ffi::{CString, OsStr};
    use std::os::unix::ffi::OsStrExt;
    setup();
    let dir = std::env::temp_dir().join(format!("ga-ffi-adv-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    type Writer = unsafe extern "C" fn(*const std::ffi::c_char) -> i64;
    let writers: [(&[u8], Writer); 4] = [
        (b"snap\xff.pickle", graphalloc_snapshot_pickle),
        (b"snap\xfe.html", graphalloc_snapshot_html),
        (b"trace\xfd.trace", graphalloc_history_write_trace),
        (b"trace\xfc.trace.gz", graphalloc_history_write_trace),
    ];
    for (name, write) in writers {
        let path = dir.join(OsStr::from_bytes(name));
        let c_path = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        let written = unsafe { write(c_path.as_ptr()) };
        assert!(written >= 0, "{}: {}", path.display(), last_error());
        assert!(path.is_file(), "{} not written", path.display());
    }
    let gz = std::fs::read(dir.join(OsStr::from_bytes(b"trace\xfc.trace.gz"))).unwrap();
    assert_eq!(&gz[..2], &[0x1f, 0x8b], "a .gz path is gzip'd");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The environment variable that turns [`reentrant_observer_child`] into
/// the child process of [`an_observer_whose_retry_fails_is_not_reentered`].
const CHILD_VAR: &str = "GRAPHALLOC_FFI_ADVERSARIAL_CHILD";

/// The observer's nesting: calls now running, the deepest seen, calls made.
static DEPTH: [std::sync::atomic::AtomicUsize; 3] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 3];

/// An observer that retries the failed allocation (a "free something and
/// try again" observer whose retry fails too); it gives up at depth 50, so
/// that the test ends either way.
unsafe extern "C" fn retrying_observer(report: *const GraphallocOomReport, _: *mut c_void) {
    use std::sync::atomic::Ordering::SeqCst;
    let depth = DEPTH[0].fetch_add(1, SeqCst) + 1;
    DEPTH[1].fetch_max(depth, SeqCst);
    DEPTH[2].fetch_add(1, SeqCst);
    if depth < 50 {
        // SAFETY: the report is valid during the call.
        let size = unsafe { (*report).requested } as isize;
        let p = c_malloc(size, 0);
        graphalloc_free(p, 0, 0, null_mut());
    }
    DEPTH[0].fetch_sub(1, SeqCst);
}

/// The child's body: one failed allocation with the retrying observer set.
/// Does nothing in a normal test run.
#[test]
fn reentrant_observer_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    setup();
    // SAFETY: the observer may be called from any thread, and ignores its
    // user data.
    assert_eq!(
        unsafe { graphalloc_set_oom_observer(Some(retrying_observer), null_mut()) },
        0
    );
    let held = c_malloc(200 << 20, 0);
    assert!(!held.is_null(), "{}", last_error());
    assert!(c_malloc(100 << 20, 0).is_null());
    assert!(c_malloc(120 << 20, 0).is_null());
    let e = last_error();
    graphalloc_free(held, 0, 0, null_mut());
    let [_, deepest, calls] = DEPTH
        .each_ref()
        .map(|d| d.load(std::sync::atomic::Ordering::SeqCst));
    println!("deepest {deepest} calls {calls} error [{e}]");
}

/// An observer that allocates, and fails again, is not called again from
/// inside itself: a retrying observer would otherwise recurse until the
/// stack overflows. The nested failure is still an error to its caller.
#[test]
#[cfg_attr(miri, ignore = "starts a process")]
fn an_observer_whose_retry_fails_is_not_reentered() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "reentrant_observer_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{stdout}", out.status);
    assert!(stdout.contains("deepest 1 calls 2 "), "{stdout}");
}

/// Recordings begun, ended, planned and released from many threads at
/// once, on a stream the other threads allocate on: every call succeeds
/// and every planned pool releases.
#[test]
fn recordings_from_many_threads() {
    setup();
    on_threads(4, |t| {
        for i in 0..50 {
            let rec = graphalloc_plan_record_begin(1, null_mut());
            assert_ne!(rec, 0, "{}", last_error());
            let p = c_malloc(4096 * (1 + (t + i) as isize % 5), 1);
            assert!(!p.is_null(), "{}", last_error());
            graphalloc_free(p, 0, 0, null_mut());
            let n = graphalloc_plan_record_end(rec);
            assert!(n >= 1, "{n}: {}", last_error());
            // SAFETY: one readable u64.
            let pool = unsafe { graphalloc_plan_pool_create(1, &rec, 1) };
            assert_ne!(pool, 0, "{}", last_error());
            assert_eq!(graphalloc_plan_record_release(rec), 0);
            assert_eq!(graphalloc_plan_start(pool, 0), 0, "{}", last_error());
            assert_eq!(graphalloc_pool_release(pool), 0);
        }
    });
}

/// Two threads freeing the same pointer at once (a double free racing with
/// the first): exactly one free succeeds, the other is an error, and the
/// pool's books stay right. (A pool of its own: in the cache, the block
/// freed first could be handed to another test before the second free.)
#[test]
fn racing_double_frees() {
    use std::sync::{Arc, Barrier};
    setup();
    let pool = graphalloc_pool_create(1);
    assert_ne!(pool, 0, "{}", last_error());
    let barrier = Arc::new(Barrier::new(2));
    for round in 0..300 {
        assert_eq!(graphalloc_begin_graph_mode(pool), 0);
        let p = c_malloc(512 + 512 * (round % 3), 1) as usize;
        assert_eq!(graphalloc_end_graph_mode(), 0);
        assert_ne!(p, 0, "{}", last_error());
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    graphalloc_free(p as *mut c_void, 0, 0, null_mut());
                    last_error().is_empty()
                })
            })
            .collect();
        let ok: Vec<bool> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            ok.iter().filter(|&&f| f).count(),
            1,
            "round {round}: {ok:?}"
        );
        let s = pool_stats(pool);
        assert_eq!((s.live_blocks, s.allocated_bytes), (0, 0), "round {round}");
        assert_eq!(s.frees, round as u64 + 1);
    }
    assert_eq!(graphalloc_pool_release(pool), 0);
}
