/*
 * graphalloc.h: the C ABI of libgraphalloc.so (src/ffi.rs).
 *
 * graphalloc is a CUDA device-memory caching allocator with graph memory
 * pools. `cargo build --release` builds target/release/libgraphalloc.so.
 * graphalloc_malloc / graphalloc_free have the signatures of PyTorch's
 * torch.cuda.memory.CUDAPluggableAllocator:
 *
 *     alloc = torch.cuda.memory.CUDAPluggableAllocator(
 *         "libgraphalloc.so", "graphalloc_malloc", "graphalloc_free")
 *     torch.cuda.memory.change_current_allocator(alloc)
 *
 * Every function works on the process-wide allocator, built on first use
 * from the GRAPHALLOC_CONF environment variable (e.g. "backend:cuda").
 *
 * Errors: a function that fails returns NULL (pointers), 0 (pool ids) or -1
 * (ints), and graphalloc_last_error() says why. The last error is per thread
 * and is cleared on entry to every other graphalloc_* call, so read it right
 * after the failing call. graphalloc_malloc and graphalloc_free also print
 * their errors to stderr (graphalloc_set_log_errors turns that off), since
 * PyTorch looks at nothing but the returned pointer. No Rust panic ever
 * crosses these functions: a panic is reported as an error, and a closed or
 * broken stderr only loses the printed copy of an error.
 *
 * All functions may be called from any thread.
 */
#ifndef GRAPHALLOC_H
#define GRAPHALLOC_H

#include <stdint.h>
#include <sys/types.h> /* ssize_t */

#ifdef __cplusplus
extern "C" {
#endif

#if !defined(__DRIVER_TYPES_H__) && !defined(GRAPHALLOC_HAVE_CUDA_STREAM_T)
/* The CUDA runtime's stream handle, declared as <driver_types.h> does;
 * include the CUDA headers first to use theirs. */
typedef struct CUstream_st *cudaStream_t;
#endif

/* The version of this ABI; graphalloc_abi_version() returns it. */
#define GRAPHALLOC_ABI_VERSION 2

/* Alignment of every block graphalloc_malloc hands out. */
#define GRAPHALLOC_MALLOC_ALIGNMENT 512

/* One owner's figures: a device's caching allocator, a graph pool, or a sum. */
typedef struct GraphallocPoolStats {
    uint64_t allocated_bytes;      /* bytes in live blocks (rounded to 512 B) */
    uint64_t peak_allocated_bytes; /* highest allocated_bytes reached */
    uint64_t requested_bytes;      /* bytes asked for by live allocations */
    uint64_t reserved_bytes;       /* device memory held in segments */
    uint64_t peak_reserved_bytes;  /* highest reserved_bytes reached */
    uint64_t live_blocks;          /* live blocks */
    uint64_t allocations;          /* allocations served, ever */
    uint64_t frees;                /* frees served, ever */
    uint64_t oom_retries;          /* cache releases + retries on a full device */
    uint64_t segments;             /* segments held now */
    uint64_t segments_reserved;    /* segments reserved, ever */
    uint64_t pending_frees;        /* freed blocks waiting on stream events or a
                                    * capture before reuse (ABI version 2) */
} GraphallocPoolStats;

/* The process-wide allocator's statistics. */
typedef struct GraphallocStats {
    GraphallocPoolStats caching; /* caching allocators, all devices */
    GraphallocPoolStats pools;   /* graph pools, also released ones */
    GraphallocPoolStats total;   /* everything; peaks are exact peaks of the sum */
    int32_t in_graph_mode;       /* 1 if the calling thread is in graph mode */
    int32_t device_count;        /* devices the allocator manages */
} GraphallocStats;

/* ---- Allocation (PyTorch CUDAPluggableAllocator signatures) ------------- */

/* Allocates `size` bytes on `device` for use on `stream`, aligned to 512 B.
 * Returns NULL for size 0 (not an error: graphalloc_last_error() is "") and
 * on error (negative size, invalid device, unknown stream, out of memory).
 * In graph mode (graphalloc_begin_graph_mode) on a pool of `device`, or while
 * `stream` is being captured into a CUDA graph, the block comes from a graph
 * pool; otherwise from the device's caching allocator. */
void *graphalloc_malloc(ssize_t size, int device, cudaStream_t stream);

/* Frees a pointer from graphalloc_malloc, routed to its owner by address:
 * `size`, `device` and `stream` are accepted for PyTorch's signature and not
 * needed. NULL is a no-op. An unknown, already freed or interior pointer
 * changes nothing and is reported through graphalloc_last_error(). */
void graphalloc_free(void *ptr, ssize_t size, int device, cudaStream_t stream);

/* ---- Errors and version -------------------------------------------------- */

/* Why the calling thread's latest graphalloc_* call failed, or "" if it
 * succeeded. Never NULL; valid until the thread's next graphalloc_* call. */
const char *graphalloc_last_error(void);

/* Whether graphalloc_malloc / graphalloc_free print their errors to stderr
 * (nonzero, the default) or only record them. */
void graphalloc_set_log_errors(int enabled);

/* Whether a graphalloc_malloc of a nonzero size that fails aborts the process
 * after printing why (nonzero) instead of returning NULL (0, the default).
 * PyTorch 2.11's CUDAPluggableAllocator does not check the pointer: a NULL
 * becomes a tensor at address 0 and, at first use, an illegal memory access
 * that breaks the CUDA context; graphalloc.torch.use() sets this. */
void graphalloc_set_abort_on_malloc_failure(int enabled);

/* GRAPHALLOC_ABI_VERSION of the library (2: GraphallocPoolStats gained
 * pending_frees). Like every function but graphalloc_last_error, it clears
 * the calling thread's last error, as do the graphalloc_set_* functions. */
uint32_t graphalloc_abi_version(void);

/* ---- Statistics and cache ----------------------------------------------- */

/* Number of devices, or -1 if the allocator cannot be built (for instance a
 * malformed GRAPHALLOC_CONF). */
int graphalloc_device_count(void);

/* Fills *out. Returns 0, or -1 (NULL out, allocator cannot be built). */
int graphalloc_stats(GraphallocStats *out);

/* Fills *out with `device`'s caching allocator. Returns 0, or -1. */
int graphalloc_device_stats(int device, GraphallocPoolStats *out);

/* Fills *out with graph pool `pool`'s figures. Returns 0, or -1. */
int graphalloc_pool_stats(uint64_t pool, GraphallocPoolStats *out);

/* The mapping calls of expandable segments, all devices summed, and what
 * unmapping waited for: maps and unmaps made (and ns in them), bytes, waits
 * for a stream before unmapping under real pressure (the limit, a full
 * device, empty_cache) and ns in them, fences recorded by reclaims for the
 * idle budget (which never wait) and idle runs those left mapped. */
typedef struct GraphallocMappingStats {
    uint64_t maps;
    uint64_t unmaps;
    uint64_t map_ns;
    uint64_t unmap_ns;
    uint64_t mapped_bytes;
    uint64_t unmapped_bytes;
    uint64_t waits;
    uint64_t wait_ns;
    uint64_t fences;
    uint64_t deferred_unmaps;
} GraphallocMappingStats;

/* Fills *out. Returns 0, or -1 (NULL out, allocator cannot be built). */
int graphalloc_mapping_stats(GraphallocMappingStats *out);

/* Restarts the caching allocators' peaks from now. Returns 0, or -1. */
int graphalloc_reset_peak_stats(void);

/* Releases the cached, unused segments of every device's caching allocator
 * (graph pools keep theirs). Returns the bytes released, or -1. */
int64_t graphalloc_empty_cache(void);

/* ---- Graph pools and graph mode ----------------------------------------- */

/* Creates a graph pool on `device`. Returns its id (never 0), or 0 on error. */
uint64_t graphalloc_pool_create(int device);

/* Drops the handle of `pool`. Its live blocks stay valid and free normally;
 * its memory goes back once none is live and no thread is in graph mode on
 * it. Returns 0, or -1 for an unknown id. */
int graphalloc_pool_release(uint64_t pool);

/* Makes `pool` reusable for a new capture. Returns 0, or -1 (unknown pool,
 * or blocks of it still live). */
int graphalloc_pool_reset(uint64_t pool);

/* Puts the calling thread in graph mode on `pool` until the matching
 * graphalloc_end_graph_mode(): its allocations on the pool's device come
 * from the pool. Nests. Per thread: other threads (PyTorch's autograd
 * threads) are not affected. Returns 0, or -1 (unknown pool). */
int graphalloc_begin_graph_mode(uint64_t pool);

/* Leaves the calling thread's innermost graph mode. Returns 0, or -1 when
 * the thread has no graphalloc_begin_graph_mode() left to end. */
int graphalloc_end_graph_mode(void);

/* Number of graphalloc_begin_graph_mode() calls of this thread not ended. */
int graphalloc_graph_mode_depth(void);

/* ---- Streams and captures ------------------------------------------------ */

/* Marks the live block at `ptr` as used by `stream` too (PyTorch's
 * record_stream): once freed, it is not reused before the work queued on
 * `stream` by then completes. Returns 0, or -1. */
int graphalloc_record_stream(void *ptr, cudaStream_t stream);

/* While `stream` is being captured, route its allocations on the pool's
 * device to `pool` (instead of a pool made on demand per capture). Returns 0,
 * or -1 (unknown pool). */
int graphalloc_set_capture_pool(uint64_t pool, cudaStream_t stream);

/* Ends graphalloc_set_capture_pool for `stream` on `device`. Returns 0, or -1
 * (invalid device, nothing registered). */
int graphalloc_clear_capture_pool(int device, cudaStream_t stream);

/* Lets go of the pools made on demand for captures; call it once the graphs
 * captured into them are destroyed (PyTorch does not tell a pluggable
 * allocator). Returns how many were let go, or -1. */
int64_t graphalloc_release_capture_pools(void);

/* ---- Out-of-memory reports ---------------------------------------------- */

/* The report of a failed allocation. Valid only during the observer call. */
typedef struct GraphallocOomReport {
    int32_t device;
    int32_t owner;               /* 0 the cache, 1 graph pool `pool`, 2 a planned pool being made */
    uint64_t pool;               /* the pool's id for owner 1, else 0 */
    uint64_t requested;          /* bytes asked for */
    uint64_t device_free;        /* free device memory (driver) */
    uint64_t device_total;       /* total device memory (driver) */
    uint64_t limit;              /* graphalloc's limit (memory_fraction), 0 if none */
    uint64_t reserved;           /* bytes graphalloc holds on the device */
    uint64_t allocated;          /* bytes in live blocks */
    uint64_t cache_idle;         /* bytes the cache holds unused */
    uint64_t pool_idle;          /* bytes graph pools hold unused */
    uint64_t largest_free_block;
    uint64_t largest_live_count; /* entries filled in the two arrays below */
    uint64_t largest_live_addr[4];  /* largest live blocks, largest first */
    uint64_t largest_live_size[4];
    const char *message;         /* the whole error message, with what to try */
} GraphallocOomReport;

typedef void (*GraphallocOomObserver)(const GraphallocOomReport *report, void *user_data);

/* Sets the observer called once per failed allocation (any thread), before
 * the failing call returns and with no lock held (it may call any
 * graphalloc function; a failure of its own allocation returns its error
 * but is not reported to it again); replaces the previous one, NULL clears
 * it. Returns 0, or -1. */
int graphalloc_set_oom_observer(GraphallocOomObserver observer, void *user_data);

/* ---- Planned graph pools ------------------------------------------------ */

/* A planned pool's figures; every field a uint64_t. */
typedef struct GraphallocPlanStats {
    uint64_t plans;                /* recordings planned together */
    uint64_t planned_allocations;  /* allocations planned, all plans */
    uint64_t peak_live_bytes;      /* lower bound: most bytes live at once */
    uint64_t planned_bytes;        /* bytes reserved for the plan */
    uint64_t planned_hits;         /* allocations served at their planned place */
    uint64_t fallbacks;            /* captures that left their plan and grew */
    uint64_t fallback_allocations; /* allocations served by growth after that */
} GraphallocPlanStats;

/* One allocation of a recording (graphalloc_plan_record_allocations). */
typedef struct {
    uint64_t size;   /* bytes requested */
    uint64_t stream; /* the stream it was made on */
    uint64_t start;  /* the recording's clock at the allocation */
    uint64_t end;    /* the clock at its free, UINT64_MAX if it outlived the recording */
} GraphallocRecordedAlloc;

/* Starts recording the allocations on `stream` of `device` (from any
 * thread) and the frees of those blocks; allocations are served as usual
 * (run the work eagerly, e.g. a warm-up). Returns the recording's id (never
 * 0), or 0 on error. */
uint64_t graphalloc_plan_record_begin(int device, cudaStream_t stream);

/* Ends a recording (blocks still live outlive it). Returns the number of
 * allocations recorded, or -1. */
int64_t graphalloc_plan_record_end(uint64_t recording);

/* Renames stream `from` to `to` in an ended recording, for a capture that
 * repeats the recorded work on another stream. Returns the number of
 * allocations renamed, or -1 (unknown or running recording, or both streams
 * in the recording: they are not merged). */
int64_t graphalloc_plan_record_rename_stream(uint64_t recording, cudaStream_t from, cudaStream_t to);

/* Copies the first `capacity` allocations of an ended recording, in order,
 * to `out` (null when `capacity` is 0). Returns how many the recording has,
 * or -1. */
int64_t graphalloc_plan_record_allocations(uint64_t recording, GraphallocRecordedAlloc *out,
                                           size_t capacity);

/* Forgets a recording. Returns 0, or -1 for an unknown id. */
int graphalloc_plan_record_release(uint64_t recording);

/* Makes a pool on `device` planned from `count` ended recordings (graphs
 * that share the pool and never run concurrently need the larger of their
 * peaks): its memory is reserved now, and captures follow plan 0 first.
 * Returns the pool's id (release with graphalloc_pool_release), or 0. */
uint64_t graphalloc_plan_pool_create(int device, const uint64_t *recordings, size_t count);

/* The next allocations from `pool` follow plan `plan` (a recording's index)
 * from its start; call before each capture. Returns 0, or -1. */
int graphalloc_plan_start(uint64_t pool, size_t plan);

/* Fills *out with a planned pool's figures. Returns 0, or -1. */
int graphalloc_plan_stats(uint64_t pool, GraphallocPlanStats *out);

/* ---- Memory history and snapshots --------------------------------------- */

/* Starts (or resizes) the memory history: the last `capacity` events (1 to
 * 2^26: allocations, free requests and completions, segment reserves and
 * releases, maps and unmaps, out-of-memory failures) are kept from now on,
 * as GRAPHALLOC_CONF=history:N does from the start. Returns 0, or -1. */
int graphalloc_history_start(size_t capacity);

/* Stops recording; the events kept stay readable. Returns 0, or -1. */
int graphalloc_history_stop(void);

/* Forgets the events kept. Returns 0, or -1. */
int graphalloc_history_clear(void);

/* The number of events kept, or -1. */
int64_t graphalloc_history_len(void);

/* Whether each event captures a Rust backtrace (slow). Returns 0, or -1. */
int graphalloc_history_set_backtraces(int enabled);

/* Sets the calling thread's context string (copied; NULL clears it): every
 * event the thread causes carries it, as a frame of PyTorch's snapshot
 * format. Returns 0, or -1 (not UTF-8). */
int graphalloc_history_set_context(const char *context);

/* Writes a snapshot (every segment and block, plus the history) to `path`
 * in PyTorch's memory snapshot pickle format, as
 * torch.cuda.memory._dump_snapshot does: open it in PyTorch's memory viewer
 * or with torch.cuda._memory_viz. Returns the bytes written, or -1. */
int64_t graphalloc_snapshot_pickle(const char *path);

/* Writes a snapshot as a self-contained HTML page. Returns the bytes
 * written, or -1. */
int64_t graphalloc_snapshot_html(const char *path);

/* Writes the history's allocations and frees as a replay trace (gzip'd if
 * `path` ends in .gz) for `replay --compare`. Returns the number of trace
 * events, or -1. */
int64_t graphalloc_history_write_trace(const char *path);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* GRAPHALLOC_H */
