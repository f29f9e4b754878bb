//! Graph mode: a per-thread stack of pools, and the guard that pops it.
//!
//! Graph mode belongs to the thread that entered it: other threads keep
//! allocating from the caching allocator (PyTorch had to add the same filter
//! after allocations from other threads leaked into capture pools). Each
//! entry names its pool, and each pool its allocator, so an allocator looks
//! only at the entries of its own pools, and for a device only at the
//! entries of that device's pools.
//!
//! A thread whose thread-locals are being destroyed (code running in a
//! late thread-local destructor) has no stack any more: it is in graph mode
//! on no pool, allocations go where they would outside graph mode, and a
//! guard made then does nothing. Nothing panics.

use crate::graph_pool::{GraphPool, PoolCore, PoolHandle};
use crate::sync::{thread_local, Arc};
use crate::thread_cache::PoolSlot;
use std::cell::{Cell, OnceCell, RefCell};
use std::marker::PhantomData;

struct Entry {
    token: u64,
    pool: Arc<PoolHandle>,
    slot: EntrySlot,
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Before the handle goes: the cache's blocks back to the pool.
        if let Some(slot) = self.slot.get() {
            self.pool.close_slot(slot);
        }
    }
}

/// A graph-mode entry's cache of its pool's freed blocks, for its thread
/// while the entry is its innermost on the pool (`graph_pool/slots.rs`).
/// Made lazily, so that a guard under which the thread frees nothing costs
/// nothing: a free of a pool block that finds none asks for one (it runs
/// under the ownership map's lock, where the pool's arena cannot be
/// locked), and the entry's next graph-mode allocation makes it. Never for
/// a planned pool.
#[derive(Default)]
pub(crate) struct EntrySlot {
    slot: OnceCell<Arc<PoolSlot>>,
    wanted: Cell<bool>,
}

impl EntrySlot {
    /// The cache, once made.
    #[inline]
    pub(crate) fn get(&self) -> Option<&PoolSlot> {
        self.slot.get().map(|s| &**s)
    }

    /// Makes the cache for `pool` if a free asked for one.
    #[inline]
    pub(crate) fn open_if_wanted(&self, pool: &PoolCore) {
        if self.wanted.get() {
            self.open(pool);
        }
    }

    #[cold]
    #[inline(never)]
    fn open(&self, pool: &PoolCore) {
        self.wanted.set(false);
        if let Some(slot) = pool.open_slot() {
            let _ = self.slot.set(slot);
        }
    }
}

/// The pool of a thread's graph-mode entry, lent to an allocation, with
/// the entry's cache of the pool's freed blocks.
pub(crate) type Lent<'a> = (&'a PoolCore, &'a EntrySlot);

thread_local! {
    static STACK: RefCell<Vec<Entry>> = const { RefCell::new(Vec::new()) };
    static NEXT_TOKEN: Cell<u64> = const { Cell::new(0) };
    /// The stack's length, kept beside it: a `Cell<usize>` needs no
    /// destructor, so reading it is one plain load, and a thread outside
    /// graph mode (the common case) never touches the stack itself.
    static DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// Mirrors the stack's length into [`DEPTH`].
fn set_depth(stack: &[Entry]) {
    let _ = DEPTH.try_with(|d| d.set(stack.len()));
}

/// Keeps the calling thread in graph mode on one pool until dropped.
///
/// Dropping the guard restores the mode that was in force before it was
/// made, also when the scope unwinds from a panic. Guards nest. A guard is
/// `!Send`: graph mode is a property of the thread that entered it.
///
/// Guards are expected to drop in reverse order of creation. If one is
/// dropped out of order, it removes exactly its own entry, so the other
/// guards keep theirs (the innermost live guard's pool stays current). A
/// guard leaked with `mem::forget` leaves its thread in graph mode for good.
#[must_use = "graph mode ends when the guard is dropped"]
pub struct GraphModeGuard {
    token: u64,
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for GraphModeGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphModeGuard")
            .field("token", &self.token)
            .finish()
    }
}

/// Pushes `pool` on the calling thread's stack.
pub(crate) fn enter(pool: &GraphPool) -> GraphModeGuard {
    // Late in thread teardown the stack may be gone: the guard then does
    // nothing (its token matches no entry).
    let token = NEXT_TOKEN
        .try_with(|t| {
            let token = t.get();
            t.set(token + 1);
            token
        })
        .unwrap_or(u64::MAX);
    // The stack is borrowed only while a graph-mode allocation runs
    // (`with_current_pool`); a backend method called inside it that enters
    // graph mode (backends must not call into graphalloc: they run under
    // its locks) gets a guard that does nothing, not a panic.
    let _ = STACK.try_with(|s| {
        let Ok(mut stack) = s.try_borrow_mut() else {
            return;
        };
        stack.push(Entry {
            token,
            pool: pool.core.clone(),
            slot: EntrySlot::default(),
        });
        set_depth(&stack);
    });
    GraphModeGuard {
        token,
        _not_send: PhantomData,
    }
}

impl Drop for GraphModeGuard {
    fn drop(&mut self) {
        // During thread teardown the stack may already be gone; then there
        // is nothing left to restore.
        // (As in `enter`: a stack borrowed by a graph-mode allocation is
        // left as it is.)
        let _ = STACK.try_with(|s| {
            let Ok(mut stack) = s.try_borrow_mut() else {
                return;
            };
            if let Some(i) = stack.iter().rposition(|e| e.token == self.token) {
                stack.remove(i);
                set_depth(&stack);
            }
        });
    }
}

/// Runs `f` with the innermost pool of allocator `allocator_id` that the
/// calling thread is in graph mode on: on `device`, or with `None` on any
/// device (guards on other devices' pools are looked through); `None`
/// outside graph mode. One thread-local access, and no reference count
/// touched: the pool is borrowed from the thread's stack, which stays
/// borrowed until `f` returns (a guard of this thread made or dropped
/// meanwhile does nothing: see `enter` and the guard's `Drop`). `f` must
/// therefore run no user code (out-of-memory observers run after it); it is
/// called exactly once.
#[inline(always)]
pub(crate) fn with_current_pool<R>(
    allocator_id: u64,
    device: Option<usize>,
    mut f: impl FnMut(Option<Lent<'_>>) -> R,
) -> R {
    // Outside graph mode (or once the thread-locals are gone): no pool.
    if DEPTH.try_with(Cell::get).unwrap_or(0) == 0 {
        return f(None);
    }
    with_stack_pool(allocator_id, device, f)
}

/// [`with_current_pool`] in graph mode: the look-up in the stack (apart,
/// so that the call outside graph mode is only the depth check).
#[inline]
fn with_stack_pool<R>(
    allocator_id: u64,
    device: Option<usize>,
    mut f: impl FnMut(Option<Lent<'_>>) -> R,
) -> R {
    let found = STACK.try_with(|s| {
        let stack = s.borrow();
        let pool = stack.iter().rev().find(|e| {
            e.pool.allocator_id == allocator_id && device.is_none_or(|d| e.pool.device() == d)
        });
        f(pool.map(|e| (&**e.pool, &e.slot)))
    });
    // The stack is gone (thread teardown): graph mode on no pool; `f` did
    // not run.
    found.unwrap_or_else(|_| f(None))
}

/// Runs `put` on the calling thread's cache for `pool`: that of its
/// innermost graph-mode entry on `pool`. `false` (and `put` not run)
/// outside graph mode on `pool`, while the stack is borrowed or gone, and
/// while the entry has no cache yet (it then asks for one: see
/// [`EntrySlot`]). `pool` is not a planned pool.
#[inline]
pub(crate) fn with_slot(pool: &PoolCore, put: impl FnOnce(&PoolSlot) -> bool) -> bool {
    if DEPTH.try_with(Cell::get).unwrap_or(0) == 0 {
        return false;
    }
    let found = STACK.try_with(|s| {
        let Ok(stack) = s.try_borrow() else {
            return false;
        };
        let Some(entry) = stack.iter().rev().find(|e| std::ptr::eq(&**e.pool, pool)) else {
            return false;
        };
        match entry.slot.get() {
            Some(slot) => put(slot),
            None => {
                entry.slot.wanted.set(true);
                false
            }
        }
    });
    found.unwrap_or(false)
}

/// Whether the calling thread is in graph mode for allocator `allocator_id`.
pub(crate) fn in_graph_mode_for(allocator_id: u64) -> bool {
    STACK
        .try_with(|s| {
            s.borrow()
                .iter()
                .any(|e| e.pool.allocator_id == allocator_id)
        })
        .unwrap_or(false)
}

/// Whether the calling thread is in graph mode on any pool.
pub fn is_graph_mode() -> bool {
    STACK.try_with(|s| !s.borrow().is_empty()).unwrap_or(false)
}

/// Enters graph mode on `pool` for the calling thread until the returned
/// guard is dropped: allocations of the pool's allocator on this thread come
/// from the pool.
///
/// ```
/// let pool = graphalloc::GraphPool::new();
/// {
///     let _g = graphalloc::graph_mode(&pool);
///     assert!(graphalloc::is_graph_mode());
///     let p = graphalloc::global().allocate(1 << 20, 256).unwrap();
///     graphalloc::global().free(p).unwrap();
/// }
/// assert!(!graphalloc::is_graph_mode());
/// ```
pub fn graph_mode(pool: &GraphPool) -> GraphModeGuard {
    enter(pool)
}

/// Runs `f` in graph mode on `pool`; the mode is restored when `f` returns
/// or panics.
///
/// ```
/// let pool = graphalloc::GraphPool::new();
/// let in_mode = graphalloc::with_graph_mode(&pool, graphalloc::is_graph_mode);
/// assert!(in_mode);
/// assert!(!graphalloc::is_graph_mode());
/// ```
pub fn with_graph_mode<R>(pool: &GraphPool, f: impl FnOnce() -> R) -> R {
    let _guard = enter(pool);
    f()
}
