//! The C ABI (`graphalloc::ffi`) on the host backend, called as C would call
//! it, plus checks on the built `libgraphalloc.so`: its exported symbols, and
//! a C program compiled against `include/graphalloc.h` and linked to it.
//!
//! The process-wide allocator is built once per process, so every check that
//! touches it lives in the single test `c_abi_on_the_host_backend`, which
//! sets `GRAPHALLOC_CONF` before anything else can build the allocator. The
//! other tests only look at files and start child processes.

use graphalloc::ffi::*;
use std::ffi::{c_void, CStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr::null_mut;

const CONF: &str = "backend:host,host_devices:2,host_capacity:1GiB";

/// `graphalloc_malloc` on the host backend.
fn c_malloc(size: isize, device: i32, stream: *mut c_void) -> *mut c_void {
    // SAFETY: the process-wide allocator is on the host backend, whose
    // stream handles are tags it checks and never dereferences.
    unsafe { graphalloc_malloc(size, device, stream) }
}

/// `graphalloc_record_stream` on the host backend.
fn c_record_stream(ptr: *mut c_void, stream: *mut c_void) -> i32 {
    // SAFETY: as in `c_malloc`: host stream handles are checked tags.
    unsafe { graphalloc_record_stream(ptr, stream) }
}

fn last_error() -> String {
    let ptr = graphalloc_last_error();
    assert!(!ptr.is_null(), "graphalloc_last_error returned null");
    // SAFETY: graphalloc_last_error returns a NUL-terminated string that
    // stays valid until this thread's next graphalloc call; it is copied now.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

fn stats() -> GraphallocStats {
    let mut out = GraphallocStats::default();
    // SAFETY: `out` is a valid, writable GraphallocStats.
    assert_eq!(unsafe { graphalloc_stats(&mut out) }, 0, "{}", last_error());
    out
}

fn device_stats(device: i32) -> GraphallocPoolStats {
    let mut out = GraphallocPoolStats::default();
    // SAFETY: `out` is a valid, writable GraphallocPoolStats.
    let rc = unsafe { graphalloc_device_stats(device, &mut out) };
    assert_eq!(rc, 0, "{}", last_error());
    out
}

fn pool_stats(pool: u64) -> GraphallocPoolStats {
    let mut out = GraphallocPoolStats::default();
    // SAFETY: `out` is a valid, writable GraphallocPoolStats.
    let rc = unsafe { graphalloc_pool_stats(pool, &mut out) };
    assert_eq!(rc, 0, "{}", last_error());
    out
}

fn malloc(size: isize, device: i32) -> *mut c_void {
    let p = c_malloc(size, device, null_mut());
    assert!(
        !p.is_null(),
        "graphalloc_malloc({size}, {device}) failed: {}",
        last_error()
    );
    assert_eq!(last_error(), "");
    p
}

fn free(p: *mut c_void) {
    graphalloc_free(p, 0, 0, null_mut());
    assert_eq!(last_error(), "", "free of {p:?}");
}

/// Calls `f`, which must fail, and returns the last error it left.
fn error_of(what: &str, failed: impl FnOnce() -> bool) -> String {
    assert!(failed(), "{what} should have failed");
    let e = last_error();
    assert!(!e.is_empty(), "{what} failed without a last error");
    e
}

#[test]
fn c_abi_on_the_host_backend() {
    // Before anything can build the process-wide allocator.
    std::env::set_var("GRAPHALLOC_CONF", CONF);
    // The error paths below are deliberate; keep stderr readable.
    graphalloc_set_log_errors(0);

    assert_eq!(graphalloc_abi_version(), ABI_VERSION);
    assert_eq!(last_error(), "");
    assert_eq!(graphalloc_device_count(), 2);
    assert_eq!(
        graphalloc::global().backend_kind(),
        graphalloc::BackendKind::Host
    );

    // --- malloc / free on both devices ---------------------------------
    let a = malloc(1000, 0);
    assert_eq!(a as usize % MALLOC_ALIGNMENT, 0);
    let s = stats();
    assert_eq!(s.device_count, 2);
    assert_eq!(s.in_graph_mode, 0);
    assert_eq!(s.caching.live_blocks, 1);
    assert_eq!(s.caching.requested_bytes, 1000);
    assert_eq!(s.caching.allocated_bytes, 1024);
    assert!(s.caching.reserved_bytes >= 1024);
    assert_eq!(s.total.live_blocks, 1);
    assert_eq!(s.pools.live_blocks, 0);

    // The device PyTorch names is the device the block comes from.
    let b = malloc(3 << 20, 1);
    let ga = graphalloc::global();
    assert_eq!(ga.device_of(graphalloc::DevicePtr::new(a as u64)), Some(0));
    assert_eq!(ga.device_of(graphalloc::DevicePtr::new(b as u64)), Some(1));
    assert_eq!(device_stats(0).live_blocks, 1);
    assert_eq!(device_stats(1).live_blocks, 1);
    assert_eq!(device_stats(1).requested_bytes, 3 << 20);
    free(b);
    assert_eq!(device_stats(1).live_blocks, 0);
    assert_eq!(stats().caching.frees, 1);

    // --- error paths: null + last error, nothing changes ----------------
    let before = stats();
    for device in [2, -1, i32::MAX] {
        let e = error_of("malloc on a missing device", || {
            c_malloc(4096, device, null_mut()).is_null()
        });
        assert!(e.contains("graphalloc_malloc"), "{e}");
        assert!(
            e.contains(&format!("device {device} does not exist")),
            "{e}"
        );
        assert!(e.contains("2 device(s)"), "{e}");
    }
    let e = error_of("negative size", || c_malloc(-5, 0, null_mut()).is_null());
    assert!(e.contains("negative size -5"), "{e}");
    let e = error_of("larger than the device", || {
        c_malloc(1 << 40, 0, null_mut()).is_null()
    });
    assert!(e.contains("exceeds"), "{e}");
    // On the host backend only the default stream exists.
    let e = error_of("unknown stream", || {
        c_malloc(4096, 0, 0x1234 as *mut c_void).is_null()
    });
    assert!(e.contains("unknown stream 0x1234"), "{e}");
    // A successful call clears the last error.
    free(null_mut());
    assert_eq!(last_error(), "");

    // Size 0: null, and not an error; still an error on a missing device.
    assert!(c_malloc(0, 0, null_mut()).is_null());
    assert_eq!(last_error(), "");
    let e = error_of("size 0 on a missing device", || {
        c_malloc(0, 7, null_mut()).is_null()
    });
    assert!(e.contains("device 7"), "{e}");

    // Frees of pointers graphalloc does not know.
    graphalloc_free(0xdead_0000 as *mut c_void, 64, 0, null_mut());
    let e = last_error();
    assert!(e.contains("graphalloc_free"), "{e}");
    assert!(e.contains("unknown pointer 0xdead0000"), "{e}");
    graphalloc_free(b, 3 << 20, 1, null_mut());
    assert!(last_error().contains("double free"), "{}", last_error());
    graphalloc_free((a as usize + 512) as *mut c_void, 0, 0, null_mut());
    assert!(
        last_error().contains("interior pointer"),
        "{}",
        last_error()
    );
    assert_eq!(device_stats(0).live_blocks, 1, "bad frees changed nothing");
    assert_eq!(stats().total.frees, before.total.frees);
    assert_eq!(stats().total.allocations, before.total.allocations);

    // Null output pointers.
    // SAFETY: null is allowed and reported as an error.
    let rc = unsafe { graphalloc_stats(null_mut()) };
    assert_eq!(rc, -1);
    assert!(last_error().contains("null output pointer"));
    // SAFETY: as above.
    let rc = unsafe { graphalloc_device_stats(0, null_mut()) };
    assert_eq!(rc, -1);
    let mut ps = GraphallocPoolStats::default();
    // SAFETY: `ps` is writable; the device is rejected before any write.
    let rc = unsafe { graphalloc_device_stats(5, &mut ps) };
    assert_eq!(rc, -1);
    assert!(last_error().contains("device 5"), "{}", last_error());

    // --- panic safety ----------------------------------------------------
    assert_eq!(graphalloc_test_panic(), -1);
    let e = last_error();
    assert!(e.contains("panicked"), "{e}");
    assert!(e.contains("deliberate panic"), "{e}");
    // The thread carries on normally afterwards.
    let c = malloc(512, 0);
    free(c);

    // --- frees from another thread (PyTorch frees on any thread) ---------
    let addr = std::thread::spawn(|| malloc(70_000, 1) as usize)
        .join()
        .unwrap();
    assert_eq!(device_stats(1).live_blocks, 1);
    free(addr as *mut c_void);
    assert_eq!(device_stats(1).live_blocks, 0);
    // A thread's errors are its own.
    std::thread::spawn(|| {
        assert_eq!(last_error(), "");
        assert!(c_malloc(1, 9, null_mut()).is_null());
        assert!(last_error().contains("device 9"));
    })
    .join()
    .unwrap();
    assert_eq!(last_error(), "");

    // --- graph pools and graph mode --------------------------------------
    let e = error_of("pool on a missing device", || {
        graphalloc_pool_create(3) == 0
    });
    assert!(e.contains("device 3"), "{e}");
    let p0 = graphalloc_pool_create(0);
    assert_ne!(p0, 0, "{}", last_error());
    let p1 = graphalloc_pool_create(1);
    assert_ne!(p1, 0, "{}", last_error());
    assert_ne!(p0, p1);
    assert_eq!(pool_stats(p0), GraphallocPoolStats::default());

    assert_eq!(graphalloc_graph_mode_depth(), 0);
    let e = error_of("end without begin", || graphalloc_end_graph_mode() != 0);
    assert!(e.contains("not in graph mode"), "{e}");
    let e = error_of("begin on an unknown pool", || {
        graphalloc_begin_graph_mode(0xffff_ffff) != 0
    });
    assert!(e.contains("unknown graph pool"), "{e}");

    let cache_before = device_stats(0);
    assert_eq!(graphalloc_begin_graph_mode(p0), 0, "{}", last_error());
    assert_eq!(graphalloc_graph_mode_depth(), 1);
    assert_eq!(stats().in_graph_mode, 1);
    let g0 = malloc(4096, 0);
    assert_eq!(pool_stats(p0).live_blocks, 1);
    assert_eq!(pool_stats(p0).requested_bytes, 4096);
    assert_eq!(device_stats(0).live_blocks, cache_before.live_blocks);
    // Graph mode on a device-0 pool leaves device 1 on its cache.
    let d1 = malloc(4096, 1);
    assert_eq!(device_stats(1).live_blocks, 1);
    // Other threads are not in graph mode.
    let other = std::thread::spawn(|| {
        assert_eq!(graphalloc_graph_mode_depth(), 0);
        assert_eq!(stats().in_graph_mode, 0);
        malloc(4096, 0) as usize
    })
    .join()
    .unwrap();
    assert_eq!(pool_stats(p0).live_blocks, 1);
    assert_eq!(device_stats(0).live_blocks, cache_before.live_blocks + 1);
    free(other as *mut c_void);

    // Nesting: the innermost pool of the device wins.
    assert_eq!(graphalloc_begin_graph_mode(p1), 0);
    assert_eq!(graphalloc_graph_mode_depth(), 2);
    let g1 = malloc(8192, 1);
    assert_eq!(pool_stats(p1).live_blocks, 1);
    // Each device takes its innermost guard: p1 is on device 1, so device
    // 0's allocations still go to p0 meanwhile.
    let c0 = malloc(512, 0);
    assert_eq!(pool_stats(p0).live_blocks, 2);
    assert_eq!(device_stats(0).live_blocks, cache_before.live_blocks);
    assert_eq!(graphalloc_end_graph_mode(), 0);
    assert_eq!(graphalloc_graph_mode_depth(), 1);
    let g0c = malloc(512, 0);
    assert_eq!(pool_stats(p0).live_blocks, 3);
    assert_eq!(graphalloc_end_graph_mode(), 0);
    assert_eq!(graphalloc_graph_mode_depth(), 0);
    assert_eq!(stats().in_graph_mode, 0);
    assert_eq!(stats().pools.live_blocks, 4);
    free(c0);

    // Out of graph mode: back to the cache; pool blocks free into the pool.
    let e1 = malloc(4096, 0);
    assert_eq!(pool_stats(p0).live_blocks, 2);
    let e = error_of("reset of a busy pool", || graphalloc_pool_reset(p0) != 0);
    assert!(e.contains("busy"), "{e}");
    for p in [g0, g0c] {
        free(p);
    }
    assert_eq!(pool_stats(p0).live_blocks, 0);
    assert_eq!(pool_stats(p0).frees, 3);
    assert_eq!(graphalloc_pool_reset(p0), 0, "{}", last_error());
    free(e1);
    free(d1);

    // Release with a live block: the block stays valid and frees normally.
    assert_eq!(graphalloc_pool_release(p1), 0);
    let e = error_of("stats of a released pool", || {
        let mut out = GraphallocPoolStats::default();
        // SAFETY: `out` is writable.
        (unsafe { graphalloc_pool_stats(p1, &mut out) }) != 0
    });
    assert!(e.contains("unknown graph pool"), "{e}");
    assert_eq!(stats().pools.live_blocks, 1);
    free(g1);
    assert_eq!(stats().pools.live_blocks, 0);
    let e = error_of("double release", || graphalloc_pool_release(p1) != 0);
    assert!(e.contains("unknown graph pool"), "{e}");
    assert!(graphalloc_pool_reset(p1) != 0);

    // Release while in graph mode on the pool: the mode keeps it alive.
    assert_eq!(graphalloc_begin_graph_mode(p0), 0);
    assert_eq!(graphalloc_pool_release(p0), 0);
    let live_pools = stats().pools.live_blocks;
    let g = malloc(1024, 0);
    assert_eq!(stats().pools.live_blocks, live_pools + 1);
    assert_eq!(graphalloc_end_graph_mode(), 0);
    free(g);
    assert_eq!(stats().pools.live_blocks, 0);

    // --- streams and captures ---------------------------------------------
    let p = graphalloc_pool_create(0);
    assert_eq!(
        graphalloc_set_capture_pool(p, null_mut()),
        0,
        "{}",
        last_error()
    );
    assert_eq!(graphalloc_clear_capture_pool(0, null_mut()), 0);
    let e = error_of("clear without a registration", || {
        graphalloc_clear_capture_pool(0, null_mut()) != 0
    });
    assert!(e.contains("no capture pool"), "{e}");
    assert!(graphalloc_clear_capture_pool(-3, null_mut()) != 0);
    assert!(graphalloc_set_capture_pool(0xffff_ffff, null_mut()) != 0);
    assert_eq!(graphalloc_release_capture_pools(), 0);
    assert_eq!(graphalloc_pool_release(p), 0);
    let r = malloc(4096, 0);
    assert_eq!(c_record_stream(r, null_mut()), 0, "{}", last_error());
    let e = error_of("record_stream on an unknown stream", || {
        c_record_stream(r, 0x99 as *mut c_void) != 0
    });
    assert!(e.contains("unknown stream"), "{e}");
    free(r);
    let e = error_of("record_stream on a freed pointer", || {
        c_record_stream(r, null_mut()) != 0
    });
    assert!(
        e.contains("double free") || e.contains("unknown pointer"),
        "{e}"
    );

    // --- cache and peaks ----------------------------------------------------
    free(a);
    let s = stats();
    assert_eq!(s.total.live_blocks, 0);
    assert!(s.caching.reserved_bytes > 0);
    assert!(s.total.peak_reserved_bytes >= s.total.reserved_bytes);
    let released = graphalloc_empty_cache();
    assert_eq!(
        released,
        s.caching.reserved_bytes as i64,
        "{}",
        last_error()
    );
    let s = stats();
    assert_eq!(s.caching.reserved_bytes, 0);
    assert!(s.caching.peak_reserved_bytes > 0);
    assert_eq!(s.caching.allocations, s.caching.frees);
    assert_eq!(s.pools.allocations, s.pools.frees);
    assert_eq!(
        s.total.allocations,
        s.caching.allocations + s.pools.allocations
    );
    assert_eq!(graphalloc_reset_peak_stats(), 0);
    let s = stats();
    assert_eq!(s.caching.peak_reserved_bytes, s.caching.reserved_bytes);
    assert_eq!(s.total.peak_reserved_bytes, s.total.reserved_bytes);
    assert_eq!(s.total.peak_allocated_bytes, s.total.allocated_bytes);
    for device in [0, 1] {
        let d = device_stats(device);
        assert_eq!(d.peak_reserved_bytes, d.reserved_bytes);
        assert_eq!(d.peak_allocated_bytes, d.allocated_bytes);
    }
    assert_eq!(last_error(), "");
}

/// `libgraphalloc.so` as cargo built it for this test run: in `deps/` next
/// to the test executable (`cargo test`), or in `target/<profile>/` (where
/// `cargo build` puts it).
fn cdylib() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    [deps, deps.parent()?]
        .iter()
        .map(|dir| dir.join("libgraphalloc.so"))
        .find(|so| so.is_file())
}

/// The function names `include/graphalloc.h` declares.
fn declared_functions(header: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in header.lines() {
        let line = line.trim();
        if line.starts_with("/*") || line.starts_with('*') || line.starts_with('#') {
            continue;
        }
        if let Some(start) = line.find("graphalloc_") {
            let rest = &line[start..];
            if let Some(end) = rest.find('(') {
                let name = &rest[..end];
                if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

fn header_path() -> PathBuf {
    // Relative to the package root, where cargo runs integration tests (and
    // where the GPU machine runs the carried test binaries).
    let relative = Path::new("include/graphalloc.h");
    if relative.is_file() {
        relative.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
    }
}

#[test]
fn header_declares_the_exported_functions() {
    let Ok(header) = std::fs::read_to_string(header_path()) else {
        eprintln!("skipped: include/graphalloc.h not found");
        return;
    };
    let names = declared_functions(&header);
    for expected in [
        "graphalloc_malloc",
        "graphalloc_free",
        "graphalloc_last_error",
        "graphalloc_stats",
        "graphalloc_empty_cache",
        "graphalloc_pool_create",
        "graphalloc_pool_release",
        "graphalloc_pool_reset",
        "graphalloc_begin_graph_mode",
        "graphalloc_end_graph_mode",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} not declared"
        );
    }
    assert!(names.len() >= 20, "{names:?}");
}

#[test]
#[cfg_attr(miri, ignore = "starts processes (nm, cc, the C program)")]
fn cdylib_exports_every_declared_symbol() {
    let Some(so) = cdylib() else {
        eprintln!("skipped: libgraphalloc.so not found next to the test executable");
        return;
    };
    let Ok(header) = std::fs::read_to_string(header_path()) else {
        eprintln!("skipped: include/graphalloc.h not found");
        return;
    };
    let output = match Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
    {
        Ok(o) if o.status.success() => o,
        other => {
            eprintln!("skipped: nm -D failed or is missing: {other:?}");
            return;
        }
    };
    let listing = String::from_utf8_lossy(&output.stdout);
    let exported: Vec<&str> = listing
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().rev();
            let name = f.next()?;
            let kind = f.next()?;
            (kind == "T").then_some(name)
        })
        .collect();
    let mut declared = declared_functions(&header);
    declared.push("graphalloc_test_panic".into());
    for name in &declared {
        assert!(
            exported.contains(&name.as_str()),
            "{name} is not exported by {}",
            so.display()
        );
    }
    // And nothing of graphalloc's is exported that the header leaves out.
    for name in exported.iter().filter(|n| n.starts_with("graphalloc_")) {
        assert!(
            declared.iter().any(|d| d == name),
            "{name} is exported but not declared in include/graphalloc.h"
        );
    }
}

/// A C program using the header and the shared library, as a C or PyTorch
/// user would: struct layouts, allocation, errors, pools and graph mode.
const C_PROGRAM: &str = r#"
#include "graphalloc.h"
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { \
    fprintf(stderr, "check failed at line %d: %s (last error: %s)\n", \
            __LINE__, #c, graphalloc_last_error()); return 1; } } while (0)

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "abort") == 0) {
        /* A failed allocation now ends the process, with the reason. */
        graphalloc_set_abort_on_malloc_failure(1);
        CHECK(graphalloc_malloc(0, 0, NULL) == NULL); /* size 0 is no failure */
        graphalloc_malloc(64, 3, NULL);
        printf("not aborted\n");
        return 0;
    }
    printf("layout %zu %zu %zu %zu %zu %zu\n", sizeof(GraphallocPoolStats),
           sizeof(GraphallocStats), offsetof(GraphallocStats, pools),
           offsetof(GraphallocStats, in_graph_mode),
           offsetof(GraphallocStats, device_count),
           offsetof(GraphallocPoolStats, pending_frees));
    graphalloc_set_log_errors(0);
    CHECK(graphalloc_abi_version() == GRAPHALLOC_ABI_VERSION);
    CHECK(graphalloc_device_count() == 1);
    void *p = graphalloc_malloc(1000, 0, NULL);
    CHECK(p != NULL);
    CHECK(((size_t)p % GRAPHALLOC_MALLOC_ALIGNMENT) == 0);
    GraphallocStats s;
    CHECK(graphalloc_stats(&s) == 0);
    CHECK(s.caching.live_blocks == 1 && s.caching.requested_bytes == 1000);
    CHECK(s.device_count == 1);
    CHECK(graphalloc_malloc(16, 1, NULL) == NULL);
    CHECK(strstr(graphalloc_last_error(), "device 1 does not exist") != NULL);
    CHECK(graphalloc_malloc(0, 0, NULL) == NULL);
    CHECK(graphalloc_last_error()[0] == '\0');
    graphalloc_free((void *)0x10, 16, 0, NULL);
    CHECK(strstr(graphalloc_last_error(), "unknown pointer") != NULL);

    uint64_t pool = graphalloc_pool_create(0);
    CHECK(pool != 0);
    CHECK(graphalloc_begin_graph_mode(pool) == 0);
    void *g = graphalloc_malloc(4096, 0, NULL);
    CHECK(g != NULL);
    CHECK(graphalloc_end_graph_mode() == 0);
    CHECK(graphalloc_end_graph_mode() == -1);
    GraphallocPoolStats ps;
    CHECK(graphalloc_pool_stats(pool, &ps) == 0 && ps.live_blocks == 1);
    CHECK(graphalloc_pool_reset(pool) == -1);
    graphalloc_free(g, 4096, 0, NULL);
    CHECK(graphalloc_pool_reset(pool) == 0);
    CHECK(graphalloc_pool_release(pool) == 0);
    graphalloc_free(p, 1000, 0, NULL);
    CHECK(graphalloc_last_error()[0] == '\0');
    void *big = graphalloc_malloc(12 << 20, 0, NULL); /* expandable: mapped */
    CHECK(big != NULL);
    graphalloc_free(big, 12 << 20, 0, NULL);
    CHECK(graphalloc_empty_cache() > 0);
    CHECK(graphalloc_stats(&s) == 0 && s.total.reserved_bytes == 0);
    GraphallocMappingStats m;
    CHECK(graphalloc_mapping_stats(&m) == 0);
    CHECK(m.maps >= 1 && m.unmaps >= 1 && m.mapped_bytes == m.unmapped_bytes);
    CHECK(m.waits == 0); /* nothing queued on the host backend's stream 0 */
    CHECK(graphalloc_mapping_stats(NULL) == -1);
    printf("mapping %zu %zu\n", sizeof(GraphallocMappingStats),
           offsetof(GraphallocMappingStats, deferred_unmaps));
    printf("C OK\n");
    return 0;
}
"#;

#[test]
#[cfg_attr(miri, ignore = "starts processes (nm, cc, the C program)")]
fn c_program_links_against_the_cdylib() {
    let Some(so) = cdylib() else {
        eprintln!("skipped: libgraphalloc.so not found next to the test executable");
        return;
    };
    let header = header_path();
    if !header.is_file() {
        eprintln!("skipped: include/graphalloc.h not found");
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let dir = std::env::temp_dir().join(format!("graphalloc-ffi-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("main.c");
    let program = dir.join("main");
    std::fs::write(&source, C_PROGRAM).unwrap();
    let lib_dir = so.parent().unwrap();
    let compiled = Command::new(&cc)
        .args(["-std=c99", "-Wall", "-Werror", "-o"])
        .arg(&program)
        .arg(&source)
        .arg("-I")
        .arg(header.parent().unwrap())
        .arg("-L")
        .arg(lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .arg("-lgraphalloc")
        .output();
    let compiled = match compiled {
        Ok(o) => o,
        Err(e) => {
            eprintln!("skipped: no C compiler ({cc}): {e}");
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "C compile failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&program)
        .env("GRAPHALLOC_CONF", "backend:host,host_capacity:256MiB")
        // cargo's LD_LIBRARY_PATH may name target/<profile>, where an older
        // copy of the library can lie; it would win over the rpath.
        .env("LD_LIBRARY_PATH", lib_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "C program failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("C OK"), "{stdout}");
    let layout = format!(
        "layout {} {} {} {} {} {}",
        std::mem::size_of::<GraphallocPoolStats>(),
        std::mem::size_of::<GraphallocStats>(),
        std::mem::offset_of!(GraphallocStats, pools),
        std::mem::offset_of!(GraphallocStats, in_graph_mode),
        std::mem::offset_of!(GraphallocStats, device_count),
        std::mem::offset_of!(GraphallocPoolStats, pending_frees),
    );
    assert!(
        stdout.contains(&layout),
        "C and Rust layouts differ: {stdout} vs {layout}"
    );
    let mapping = format!(
        "mapping {} {}",
        std::mem::size_of::<GraphallocMappingStats>(),
        std::mem::offset_of!(GraphallocMappingStats, deferred_unmaps),
    );
    assert!(stdout.contains(&mapping), "{stdout} vs {mapping}");

    // Abort-on-failure mode: the process ends at the failed allocation.
    let run = Command::new(&program)
        .arg("abort")
        .env("GRAPHALLOC_CONF", "backend:host,host_capacity:256MiB")
        // cargo's LD_LIBRARY_PATH may name target/<profile>, where an older
        // copy of the library can lie; it would win over the rpath.
        .env("LD_LIBRARY_PATH", lib_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stdout}");
    assert!(!stdout.contains("not aborted"), "{stdout}");
    assert!(stderr.contains("device 3 does not exist"), "{stderr}");
    assert!(stderr.contains("aborting"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The calls that cannot fail still clear the calling thread's last error,
/// as every `graphalloc_*` call but `graphalloc_last_error` does: a caller
/// that checks the last error after any call must not see an old one.
#[test]
fn infallible_calls_clear_the_last_error() {
    // Values equal to the ones `c_abi_on_the_host_backend` (which may run on
    // another thread at the same time) relies on: logging off, no abort.
    let calls: [(&str, fn()); 3] = [
        ("graphalloc_abi_version", || {
            assert_eq!(graphalloc_abi_version(), ABI_VERSION);
        }),
        ("graphalloc_set_log_errors", || graphalloc_set_log_errors(0)),
        ("graphalloc_set_abort_on_malloc_failure", || {
            graphalloc_set_abort_on_malloc_failure(0)
        }),
    ];
    for (name, call) in calls {
        // A failing call that touches no allocator state.
        assert_eq!(graphalloc_test_panic(), -1);
        assert!(!last_error().is_empty());
        call();
        assert_eq!(last_error(), "", "{name} left the previous error");
    }
}

/// ABI 2: the C statistics carry `pending_frees`, copied from `PoolStats`.
#[test]
fn c_pool_stats_carry_pending_frees() {
    assert_eq!(ABI_VERSION, 2);
    let stats = graphalloc::PoolStats {
        pending_frees: 3,
        live_blocks: 5,
        ..Default::default()
    };
    let c = GraphallocPoolStats::from(stats);
    assert_eq!((c.pending_frees, c.live_blocks), (3, 5));
    assert_eq!(std::mem::size_of::<GraphallocPoolStats>(), 12 * 8);
}

/// The environment variable that turns [`broken_stderr_child`] into the
/// child process of [`no_abort_when_stderr_is_a_broken_pipe`].
const CHILD_VAR: &str = "GRAPHALLOC_FFI_TEST_CHILD";

/// The child's body: C calls whose errors are printed to stderr, which the
/// parent made a pipe with no reader. Does nothing in a normal test run.
#[test]
fn broken_stderr_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    graphalloc_set_log_errors(1);
    // An unknown pointer, a negative size, a missing device: each error is
    // printed, and each print fails with EPIPE.
    graphalloc_free(0xdead_0000 as *mut c_void, 64, 0, null_mut());
    let free_error = last_error();
    assert!(c_malloc(-1, 0, null_mut()).is_null());
    assert!(c_malloc(64, 99, null_mut()).is_null());
    let malloc_error = last_error();
    // A panic inside the wrapper (its message goes to stderr too).
    assert_eq!(graphalloc_test_panic(), -1);
    println!("child survived: [{free_error}] [{malloc_error}]");
}

/// Issue 13, item 3: `graphalloc_free` of a bad pointer printed its error
/// with `eprintln!`, outside `catch_unwind`; with stderr a pipe whose reader
/// is gone (Python, which PyTorch runs in, ignores SIGPIPE as Rust does) the
/// print panicked, and the panic aborted the process at the C boundary.
#[test]
#[cfg_attr(miri, ignore = "starts a process")]
fn no_abort_when_stderr_is_a_broken_pipe() {
    use std::process::Stdio;
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "broken_stderr_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VAR, "1")
        .env("GRAPHALLOC_CONF", "backend:host,host_capacity:64MiB")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end: every write to the child's stderr fails (EPIPE).
    drop(child.stderr.take());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the child died ({:?}) with stderr a broken pipe:\n{stdout}",
        out.status
    );
    assert!(stdout.contains("child survived"), "{stdout}");
    assert!(stdout.contains("unknown pointer 0xdead0000"), "{stdout}");
    assert!(stdout.contains("device 99 does not exist"), "{stdout}");
}
