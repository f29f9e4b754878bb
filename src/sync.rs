//! The one place that picks std or loom primitives.
//!
//! Every lock, atomic, shared pointer, thread-local and concurrent map of the
//! concurrent core is imported from here. Built normally, these are the std
//! types (and `dashmap` / `once_cell`); built with `--cfg loom` and the `loom`
//! feature (only `loom-tests/` does that), they are loom's, so the loom models
//! explore the real allocator code rather than a copy of it.
//!
//! Two dependencies are not loom-aware, so under loom they are replaced by
//! stand-ins with the same small interface, built on loom's `Mutex`:
//! [`ConcurrentMap`] (a `DashMap` normally) and [`OnceSlot`] (a
//! `once_cell::sync::OnceCell` normally). Those stand-ins are the only code that
//! differs between the two builds.

#[cfg(all(loom, feature = "loom"))]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use loom::sync::Arc;

    /// `loom::thread_local!` with the `const { .. }` initialiser form of
    /// `std::thread_local!` accepted too (loom's macro takes only a plain
    /// expression; under loom the `const` is just dropped).
    macro_rules! loom_thread_local {
        () => {};
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }; $($rest:tt)*) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init);
            $crate::sync::thread_local!($($rest)*);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init);
            $crate::sync::thread_local!($($rest)*);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init);
        };
    }
    pub(crate) use loom_thread_local as thread_local;
    pub(crate) type RawMutex<T> = loom::sync::Mutex<T>;
    pub(crate) type RawGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
}

#[cfg(not(all(loom, feature = "loom")))]
mod imp {
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    pub(crate) use std::sync::Arc;
    pub(crate) use std::thread_local;
    pub(crate) type RawMutex<T> = std::sync::Mutex<T>;
    pub(crate) type RawGuard<'a, T> = std::sync::MutexGuard<'a, T>;
}

pub(crate) use imp::{thread_local, Arc, AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// A mutex whose `lock` never fails.
///
/// Poisoning is ignored: no code of this crate panics while holding one of
/// these locks with a half-updated state, so the state is consistent whenever
/// a guard is released.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(imp::RawMutex<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Mutex(imp::RawMutex::new(value))
    }

    pub(crate) fn lock(&self) -> imp::RawGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A process-unique id for allocators and pools.
///
/// Ids only name things; they take no part in any synchronisation, so this
/// counter is a plain std atomic in both builds.
pub(crate) fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(all(loom, feature = "loom")))]
mod map {
    use std::hash::{BuildHasher, Hash};

    /// A concurrent hash map: `DashMap` with a fast hasher for pointer keys
    /// (`S`: [`super::hash::SegmentAffine`] unless the map says otherwise).
    #[derive(Debug)]
    pub(crate) struct ConcurrentMap<
        K: Eq + Hash,
        V,
        S: BuildHasher + Clone = super::hash::SegmentAffine,
    >(dashmap::DashMap<K, V, S>);

    impl<K: Eq + Hash, V, S: BuildHasher + Clone + Default> ConcurrentMap<K, V, S> {
        pub(crate) fn new() -> Self {
            ConcurrentMap(dashmap::DashMap::with_hasher(S::default()))
        }
        /// A map of `shards` shards (a power of two above 1), each behind a
        /// lock on cache lines of its own (`DashMap` pads them): more than
        /// the default (4 per core) for a map every call writes, so that
        /// threads working on different keys rarely meet on a shard.
        pub(crate) fn with_shards(shards: usize) -> Self {
            ConcurrentMap(dashmap::DashMap::with_hasher_and_shard_amount(
                S::default(),
                shards,
            ))
        }
        /// Inserts `value` unless `key` is present; returns whether it inserted.
        pub(crate) fn insert_new(&self, key: K, value: V) -> bool {
            match self.0.entry(key) {
                dashmap::Entry::Occupied(_) => false,
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(value);
                    true
                }
            }
        }
        pub(crate) fn remove(&self, key: &K) -> Option<V> {
            self.0.remove(key).map(|(_, v)| v)
        }
        /// Removes `key`'s value if `take` says so, in one step.
        pub(crate) fn remove_if(&self, key: &K, take: impl FnOnce(&V) -> bool) -> Option<V> {
            self.0.remove_if(key, |_, v| take(v)).map(|(_, v)| v)
        }
        /// Sets `key`'s value, returning the one it replaces, in one step.
        pub(crate) fn replace(&self, key: K, value: V) -> Option<V> {
            self.0.insert(key, value)
        }
        pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
            self.0.get(key).map(|v| f(&v))
        }
        #[inline]
        pub(crate) fn with_mut<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
            self.0.get_mut(key).map(|mut v| f(&mut v))
        }
        pub(crate) fn clear(&self) {
            self.0.clear();
        }
        pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
            for entry in self.0.iter() {
                f(entry.key(), entry.value());
            }
        }
    }
}

#[cfg(all(loom, feature = "loom"))]
mod map {
    use std::collections::HashMap;
    use std::hash::Hash;

    /// loom stand-in for `DashMap`: one loom mutex around a `HashMap`.
    /// Each `DashMap` call is atomic per key, which this preserves. (`S`,
    /// the hasher, only names the normal build's.)
    #[derive(Debug)]
    pub(crate) struct ConcurrentMap<K: Eq + Hash, V, S = ()>(
        super::Mutex<HashMap<K, V>>,
        std::marker::PhantomData<fn() -> S>,
    );

    impl<K: Eq + Hash, V, S> ConcurrentMap<K, V, S> {
        pub(crate) fn new() -> Self {
            ConcurrentMap(super::Mutex::new(HashMap::new()), std::marker::PhantomData)
        }
        /// One lock whatever the shard count: shards change no behaviour.
        pub(crate) fn with_shards(_shards: usize) -> Self {
            Self::new()
        }
        pub(crate) fn insert_new(&self, key: K, value: V) -> bool {
            let mut map = self.0.lock();
            if map.contains_key(&key) {
                return false;
            }
            map.insert(key, value);
            true
        }
        pub(crate) fn remove(&self, key: &K) -> Option<V> {
            self.0.lock().remove(key)
        }
        pub(crate) fn remove_if(&self, key: &K, take: impl FnOnce(&V) -> bool) -> Option<V> {
            let mut map = self.0.lock();
            if map.get(key).is_some_and(take) {
                map.remove(key)
            } else {
                None
            }
        }
        pub(crate) fn replace(&self, key: K, value: V) -> Option<V> {
            // Dropped by the caller, outside the lock (it may be a pool).
            self.0.lock().insert(key, value)
        }
        pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
            self.0.lock().get(key).map(f)
        }
        pub(crate) fn with_mut<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
            self.0.lock().get_mut(key).map(f)
        }
        pub(crate) fn clear(&self) {
            // Drop the values outside the lock: they may be pools whose drop
            // takes other locks.
            let taken = std::mem::take(&mut *self.0.lock());
            drop(taken);
        }
        pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
            for (k, v) in self.0.lock().iter() {
                f(k, v);
            }
        }
    }
}

pub(crate) use map::ConcurrentMap;

/// The hasher of maps whose keys are scrambled pointers (the ownership
/// map's: a pointer times an odd constant, whose high bits mix the whole
/// pointer): folds the high bits onto the low ones, which hashbrown's
/// bucket index takes (a 512-byte-aligned pointer's product has nine zero
/// low bits); `DashMap`'s shard and hashbrown's tag take high bits as they
/// are. One shift and one xor per call, no multiplication.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ScrambledKey(u64);

impl std::hash::BuildHasher for ScrambledKey {
    type Hasher = ScrambledKey;
    #[inline]
    fn build_hasher(&self) -> ScrambledKey {
        ScrambledKey(0)
    }
}

impl std::hash::Hasher for ScrambledKey {
    fn write(&mut self, bytes: &[u8]) {
        // Keys are `u64`s (`write_u64`); anything else still hashes.
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

#[cfg(not(all(loom, feature = "loom")))]
mod hash {
    use std::hash::{BuildHasher, Hasher};

    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    /// The hash bits `DashMap` picks its shard from: just below the top 7
    /// (which hashbrown keeps for its tag), 16 of them.
    const SHARD_BITS: u64 = 0xFFFF << 41;

    /// Hashes pointer keys so that `DashMap`'s shard comes from the 2 MiB
    /// window the pointer lies in, and the bits hashbrown uses from the
    /// whole pointer. Blocks carved from one segment then share a few map
    /// shards: a thread working in its own arena shard touches mostly its
    /// own map shards, instead of a random one per call.
    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct SegmentAffine;

    #[derive(Debug, Default)]
    pub(crate) struct State {
        mixed: u64,
        last: u64,
    }

    impl BuildHasher for SegmentAffine {
        type Hasher = State;
        fn build_hasher(&self) -> State {
            State::default()
        }
    }

    impl Hasher for State {
        fn write(&mut self, bytes: &[u8]) {
            for chunk in bytes.chunks(8) {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.write_u64(u64::from_le_bytes(word));
            }
        }
        fn write_u64(&mut self, value: u64) {
            self.mixed = (self.mixed.rotate_left(5) ^ value).wrapping_mul(K);
            self.last = value;
        }
        fn write_usize(&mut self, value: usize) {
            self.write_u64(value as u64);
        }
        fn finish(&self) -> u64 {
            let window = (self.last >> 21).wrapping_mul(K);
            let full = self.mixed ^ (self.mixed >> 29);
            (full & !SHARD_BITS) | ((window >> 48) << 41)
        }
    }
}

#[cfg(not(all(loom, feature = "loom")))]
mod once {
    /// A cell set at most once: `once_cell::sync::OnceCell`.
    #[derive(Debug)]
    pub(crate) struct OnceSlot<T>(once_cell::sync::OnceCell<T>);

    impl<T> OnceSlot<T> {
        /// An empty slot, usable in a `static`.
        pub(crate) const fn new() -> Self {
            OnceSlot(once_cell::sync::OnceCell::new())
        }
        pub(crate) fn get(&self) -> Option<&T> {
            self.0.get()
        }
        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            self.0.set(value)
        }
        pub(crate) fn get_or_try_init<E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
            self.0.get_or_try_init(f)
        }
    }
}

#[cfg(all(loom, feature = "loom"))]
mod once {
    /// loom stand-in for `OnceCell`: a loom mutex around an optional box that,
    /// once filled, is never replaced or dropped before the slot itself.
    #[derive(Debug)]
    pub(crate) struct OnceSlot<T>(super::Mutex<Option<Box<T>>>);

    impl<T> OnceSlot<T> {
        /// An empty slot.
        pub(crate) fn new() -> Self {
            OnceSlot(super::Mutex::new(None))
        }
        fn leak_ref(&self, boxed: &T) -> &T {
            // SAFETY: the box is filled once and never replaced or dropped
            // until `self` is dropped, so its heap address stays valid for as
            // long as `&self` does.
            unsafe { &*(boxed as *const T) }
        }
        pub(crate) fn get(&self) -> Option<&T> {
            let slot = self.0.lock();
            slot.as_deref().map(|v| self.leak_ref(v))
        }
        pub(crate) fn set(&self, value: T) -> Result<(), T> {
            let mut slot = self.0.lock();
            if slot.is_some() {
                return Err(value);
            }
            *slot = Some(Box::new(value));
            Ok(())
        }
        pub(crate) fn get_or_try_init<E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<&T, E> {
            let mut slot = self.0.lock();
            if slot.is_none() {
                *slot = Some(Box::new(f()?));
            }
            Ok(self.leak_ref(slot.as_deref().expect("filled above")))
        }
    }
}

pub(crate) use once::OnceSlot;

#[cfg(not(all(loom, feature = "loom")))]
mod spin {
    use std::cell::UnsafeCell;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A lock for data one thread uses on every call and others only
    /// seldom (a thread's cache: drained or read by others now and then):
    /// taking it is one compare-and-swap and releasing it one plain store,
    /// where a `Mutex` also swaps on release. A waiter spins, then yields
    /// (the holders' critical sections are short and never block).
    #[derive(Debug, Default)]
    pub(crate) struct OwnerLock<T> {
        locked: AtomicBool,
        value: UnsafeCell<T>,
    }

    // SAFETY: the value is reached only through a guard, and at most one
    // guard exists at a time (the flag's acquire/release pair orders the
    // accesses of successive holders), as with `std::sync::Mutex`.
    unsafe impl<T: Send> Sync for OwnerLock<T> {}
    // SAFETY: owning the lock owns the value.
    unsafe impl<T: Send> Send for OwnerLock<T> {}

    impl<T> OwnerLock<T> {
        pub(crate) fn new(value: T) -> Self {
            OwnerLock {
                locked: AtomicBool::new(false),
                value: UnsafeCell::new(value),
            }
        }

        #[inline]
        pub(crate) fn lock(&self) -> OwnerGuard<'_, T> {
            if self
                .locked
                .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                self.wait();
            }
            OwnerGuard { lock: self }
        }

        #[cold]
        #[inline(never)]
        fn wait(&self) {
            let mut spins = 0u32;
            loop {
                while self.locked.load(Ordering::Relaxed) {
                    if spins < 64 {
                        spins += 1;
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
                if self
                    .locked
                    .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return;
                }
            }
        }
    }

    /// Holds an [`OwnerLock`]; releases it when dropped.
    pub(crate) struct OwnerGuard<'a, T> {
        lock: &'a OwnerLock<T>,
    }

    impl<T> std::ops::Deref for OwnerGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            // SAFETY: this guard holds the lock: no other reference to the
            // value exists while it lives.
            unsafe { &*self.lock.value.get() }
        }
    }

    impl<T> std::ops::DerefMut for OwnerGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            // SAFETY: as in `deref`, and `&mut self` makes this the only
            // reference through the guard.
            unsafe { &mut *self.lock.value.get() }
        }
    }

    impl<T> Drop for OwnerGuard<'_, T> {
        #[inline]
        fn drop(&mut self) {
            self.lock.locked.store(false, Ordering::Release);
        }
    }
}

#[cfg(all(loom, feature = "loom"))]
mod spin {
    /// loom stand-in for the spin lock: a loom mutex (same exclusion; loom
    /// explores its interleavings without modelling a spin loop).
    pub(crate) type OwnerLock<T> = super::Mutex<T>;
}

pub(crate) use spin::OwnerLock;
