//! loom models of graphalloc live in `tests/`; this library holds what they
//! share. Everything here is compiled only with `--cfg loom` (see README.md),
//! so a normal `cargo test --workspace` builds an empty crate.

#[cfg(loom)]
mod support {
    use graphalloc::{Allocator, Backend, HostBackend};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Capacity of the simulated device of every model: room for a handful
    /// of 2 MiB segments, far more than any model needs.
    pub const CAPACITY: usize = 64 << 20;

    /// An allocator over one [`HostBackend`] of [`CAPACITY`] bytes, built
    /// inside a loom execution (its locks and atomics are loom's).
    ///
    /// Backends are shared through std `Arc`s in both builds (immutable
    /// handles, not modelled state).
    pub fn host_allocator() -> Allocator {
        let backend: std::sync::Arc<dyn Backend> =
            std::sync::Arc::new(HostBackend::new(0, CAPACITY));
        Allocator::from_backends(vec![backend], 1.0).expect("one backend given")
    }

    /// The [`HostBackend`] of device 0 of an allocator made by
    /// [`host_allocator`], for its release and byte counters.
    pub fn host(alloc: &Allocator) -> &HostBackend {
        let backend: &dyn Backend = &**alloc.backend(0).expect("device 0 exists");
        // SAFETY: every allocator of these models is built by
        // `host_allocator`, whose device 0 backend is a `HostBackend`; the
        // data pointer of the `dyn Backend` therefore points at one, and the
        // returned borrow lives no longer than `alloc`, which owns it.
        unsafe { &*(backend as *const dyn Backend as *const HostBackend) }
    }

    /// Runs `body` under loom with the given preemption bound (`None`: no
    /// bound, every interleaving), unless `LOOM_MAX_PREEMPTIONS` overrides
    /// it, and prints how many executions (interleavings) were explored.
    /// `body` gets a [`Tally`] to note which way each execution went.
    /// Returns the tally, to check that every outcome of the race occurred.
    pub fn explore<F>(name: &str, preemption_bound: Option<usize>, body: F) -> Tally
    where
        F: Fn(&Tally) + Sync + Send + 'static,
    {
        let executions = std::sync::Arc::new(AtomicUsize::new(0));
        let tally = std::sync::Arc::new(Tally::default());
        let (counter, outcomes) = (executions.clone(), tally.clone());
        let mut builder = loom::model::Builder::new();
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            builder.preemption_bound = preemption_bound;
        }
        let bound = builder.preemption_bound;
        let start = std::time::Instant::now();
        builder.check(move || {
            counter.fetch_add(1, Ordering::Relaxed);
            body(&outcomes);
        });
        let n = executions.load(Ordering::Relaxed);
        eprintln!(
            "loom model {name}: preemption bound {}, {n} interleavings explored in {:.2?}; outcomes {:?}",
            bound.map_or("none (exhaustive)".to_string(), |b| b.to_string()),
            start.elapsed(),
            tally.counts()
        );
        std::sync::Arc::try_unwrap(tally).unwrap_or_else(|t| Tally(Mutex::new(t.counts())))
    }

    /// How many executions of a model went each way, by outcome name.
    ///
    /// Ghost state, outside loom: a std mutex adds no loom scheduling point,
    /// and loom runs one thread at a time, so it never blocks.
    #[derive(Debug, Default)]
    pub struct Tally(Mutex<BTreeMap<&'static str, usize>>);

    impl Tally {
        /// Counts one execution that went the `outcome` way.
        pub fn note(&self, outcome: &'static str) {
            *self.0.lock().unwrap().entry(outcome).or_default() += 1;
        }

        /// The counts so far.
        pub fn counts(&self) -> BTreeMap<&'static str, usize> {
            self.0.lock().unwrap().clone()
        }

        /// Asserts that each of `outcomes` occurred in some execution: the
        /// model really explored both sides of its race.
        pub fn expect(&self, outcomes: &[&str]) {
            let counts = self.counts();
            for outcome in outcomes {
                assert!(
                    counts.get(outcome).copied().unwrap_or(0) > 0,
                    "no explored interleaving had outcome {outcome:?} (outcomes: {counts:?})"
                );
            }
        }
    }
}

#[cfg(loom)]
pub use support::*;
