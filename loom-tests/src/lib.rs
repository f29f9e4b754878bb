//! loom models of graphalloc live in `tests/`; this library holds what they
//! share. Everything here is compiled only with `--cfg loom` (see README.md),
//! so a normal `cargo test --workspace` builds an empty crate.

#[cfg(loom)]
mod support {
    use graphalloc::{Allocator, Backend, Config, HostBackend};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Capacity of the simulated device of every model: room for a handful
    /// of 2 MiB segments, far more than any model needs.
    pub const CAPACITY: usize = 64 << 20;

    /// An allocator over one [`HostBackend`] of [`CAPACITY`] bytes, built
    /// inside a loom execution (its locks and atomics are loom's), in a loom
    /// `Arc` to share with the model's threads; and a handle on the backend,
    /// for its release and byte counters.
    ///
    /// Backends are shared through std `Arc`s in both builds (immutable
    /// handles, not modelled state; loom's `Arc` cannot be unsize-coerced to
    /// `Arc<dyn Backend>`). The backend's own counters and locks are built
    /// on the crate's `sync` types, so they are loom's here.
    pub fn host_allocator() -> (loom::sync::Arc<Allocator>, std::sync::Arc<HostBackend>) {
        host_allocator_with(&Config::default())
    }

    /// As [`host_allocator`], with the settings of `config` (its backend
    /// keys are not used).
    pub fn host_allocator_with(
        config: &Config,
    ) -> (loom::sync::Arc<Allocator>, std::sync::Arc<HostBackend>) {
        let host = std::sync::Arc::new(HostBackend::new(0, CAPACITY));
        let backend: std::sync::Arc<dyn Backend> = host.clone();
        let alloc =
            Allocator::from_backends_with(vec![backend], config).expect("one backend given");
        (loom::sync::Arc::new(alloc), host)
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
