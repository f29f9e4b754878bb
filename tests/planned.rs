//! Planned graph pools under the oracle (`tests/oracle/`): a recorded run is
//! planned into a pool, and captures of the same run, of perturbed runs
//! (another size, another alignment, more allocations, a block kept live
//! longer) and of several runs sharing the pool are checked at every step:
//! no two live blocks overlap, every block lies in a held segment, and the
//! statistics equal the model's sums. Random programs make a property test.

mod oracle;

use graphalloc::{Allocator, DevicePtr, Error, Recording, BLOCK_ROUND};
use oracle::{round_up, Harness, GIB, KIB, MIB};

/// One step of a program: allocate (size, alignment), or free the block of
/// the n-th allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Alloc(usize, usize),
    Free(usize),
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random program of `n` allocations: sizes from 1 B to 6 MiB, mostly
/// 512-byte aligned, frees interleaved; some blocks are never freed.
fn program(seed: u64, n: usize) -> Vec<Op> {
    let mut rng = Rng(seed | 1);
    let mut ops = Vec::new();
    let mut live: Vec<usize> = Vec::new();
    for i in 0..n {
        let size = match rng.below(4) {
            0 => rng.below(4 * KIB as u64) as usize + 1,
            1 => rng.below(MIB as u64) as usize + 1,
            _ => rng.below(6 * MIB as u64) as usize + 1,
        };
        let align = if rng.below(6) == 0 { 4096 } else { 512 };
        ops.push(Op::Alloc(size, align));
        live.push(i);
        while !live.is_empty() && rng.below(3) != 0 {
            let k = rng.below(live.len() as u64) as usize;
            ops.push(Op::Free(live.swap_remove(k)));
        }
    }
    // About a quarter outlive the run.
    for k in live {
        if rng.below(4) != 0 {
            ops.push(Op::Free(k));
        }
    }
    ops
}

fn block_size(size: usize, align: usize) -> usize {
    round_up(size + align.saturating_sub(BLOCK_ROUND), BLOCK_ROUND)
}

/// Runs `ops` eagerly on `alloc` while recording; returns the recording and
/// the blocks that outlive it (freed by the caller).
fn record(alloc: &Allocator, ops: &[Op]) -> (Recording, Vec<DevicePtr>) {
    let guard = alloc.start_recording();
    let mut ptrs = Vec::new();
    for op in ops {
        match *op {
            Op::Alloc(size, align) => ptrs.push(Some(alloc.allocate(size, align).unwrap())),
            Op::Free(i) => alloc.free(ptrs[i].take().unwrap()).unwrap(),
        }
    }
    let rec = guard.finish();
    (rec, ptrs.into_iter().flatten().collect())
}

/// Runs `ops` through the harness in graph mode on pool slot `slot`,
/// checking the whole oracle after every step. Returns the pointers of the
/// blocks still live.
fn capture(h: &mut Harness, slot: usize, ops: &[Op]) -> Vec<u64> {
    h.enter(slot);
    let mut ptrs = Vec::new();
    for op in ops {
        match *op {
            Op::Alloc(size, align) => ptrs.push(Some(h.allocate(size, align).unwrap().ptr)),
            Op::Free(i) => h.free_block(ptrs[i].take().unwrap()),
        }
        h.check();
    }
    h.exit_all();
    ptrs.into_iter().flatten().collect()
}

/// A harness holding one pool planned from `ops` (recorded on its own
/// allocator first, through the harness's allocator cache).
fn planned(ops: &[Op]) -> (Harness, Recording) {
    let mut h = Harness::new(8 * GIB, 0);
    let (rec, outliving) = record(&h.alloc, ops);
    for p in outliving {
        h.alloc.free(p).unwrap();
    }
    let pool = h.alloc.create_planned_pool(&[&rec]).unwrap();
    h.pools.push(pool);
    h.check();
    (h, rec)
}

fn allocs(ops: &[Op]) -> Vec<(usize, usize)> {
    ops.iter()
        .filter_map(|op| match *op {
            Op::Alloc(s, a) => Some((s, a)),
            Op::Free(_) => None,
        })
        .collect()
}

#[test]
fn the_same_run_is_served_entirely_from_the_plan() {
    for seed in 1..=12u64 {
        let ops = program(seed * 7919, 40);
        let (mut h, rec) = planned(&ops);
        let pool = h.pools[0].clone();
        let plan = pool.plan_stats().unwrap();
        let sum: usize = allocs(&ops).iter().map(|&(s, a)| block_size(s, a)).sum();
        assert_eq!(plan.planned_allocations, rec.len());
        assert_eq!(plan.peak_live_bytes, rec.peak_live_bytes(0));
        assert!(plan.planned_bytes >= plan.peak_live_bytes);
        assert!(
            plan.planned_bytes <= sum,
            "planned {} > sum {sum}",
            plan.planned_bytes
        );
        assert_eq!(pool.stats().reserved_bytes, plan.planned_bytes);

        let live = capture(&mut h, 0, &ops);
        let after = pool.plan_stats().unwrap();
        assert_eq!(after.planned_hits, rec.len() as u64, "seed {seed}");
        assert_eq!((after.fallbacks, after.fallback_allocations), (0, 0));
        let stats = pool.stats();
        assert_eq!(stats.reserved_bytes, plan.planned_bytes, "no growth");
        assert_eq!(stats.peak_allocated_bytes, plan.peak_live_bytes);
        assert_eq!(live.len(), rec.outliving());

        // Re-capture after a reset: the plan restarts at its first entry.
        for p in live {
            h.free_block(p);
        }
        h.reset(0).unwrap();
        let live = capture(&mut h, 0, &ops);
        assert_eq!(
            pool.plan_stats().unwrap().planned_hits,
            2 * rec.len() as u64
        );
        assert_eq!(pool.stats().reserved_bytes, plan.planned_bytes);
        drop((live, pool));
        h.teardown();
    }
}

#[test]
fn a_different_run_falls_back_to_growth_without_overlap() {
    for seed in 1..=12u64 {
        let ops = program(seed * 104_729, 40);
        let n = allocs(&ops).len();
        let mut rng = Rng(seed);
        let k = rng.below(n as u64) as usize;
        let mut variants: Vec<(&str, Vec<Op>)> = Vec::new();
        // Another size, another alignment at allocation k.
        for (what, change) in [("size", 0), ("align", 1)] {
            let mut seen = 0;
            let changed: Vec<Op> = ops
                .iter()
                .map(|op| match *op {
                    Op::Alloc(s, a) => {
                        seen += 1;
                        match (seen - 1 == k, change) {
                            (true, 0) => Op::Alloc(s + 8 * KIB, a),
                            (true, _) => Op::Alloc(s, if a == 512 { 8192 } else { 512 }),
                            _ => Op::Alloc(s, a),
                        }
                    }
                    other => other,
                })
                .collect();
            variants.push((what, changed));
        }
        // More allocations than planned.
        let mut longer = ops.clone();
        for i in 0..5 {
            longer.push(Op::Alloc(MIB + i * 4096, 512));
        }
        variants.push(("longer", longer));
        // Every free moved to the end: planned memory is still in use when
        // the plan wants to reuse it.
        let (mut allocs_only, mut frees): (Vec<Op>, Vec<Op>) =
            ops.iter().partition(|op| matches!(op, Op::Alloc(..)));
        allocs_only.append(&mut frees);
        variants.push(("kept live", allocs_only));

        for (what, variant) in variants {
            let (mut h, rec) = planned(&ops);
            let pool = h.pools[0].clone();
            let planned_bytes = pool.plan_stats().unwrap().planned_bytes;
            let live = capture(&mut h, 0, &variant);
            let plan = pool.plan_stats().unwrap();
            let n_variant = allocs(&variant).len() as u64;
            assert_eq!(plan.planned_hits + plan.fallback_allocations, n_variant);
            match what {
                "longer" => assert_eq!((plan.planned_hits, plan.fallbacks), (n as u64, 1)),
                "kept live" => assert!(plan.fallbacks <= 1),
                _ => {
                    assert_eq!(plan.fallbacks, 1, "{what} seed {seed}");
                    assert_eq!(plan.planned_hits, k as u64, "{what} seed {seed}");
                }
            }
            assert!(pool.stats().reserved_bytes >= planned_bytes);
            assert!(rec.len() == n);
            drop((live, pool));
            h.teardown();
        }
    }
}

#[test]
fn graphs_sharing_a_planned_pool_need_the_larger_peak() {
    // Two "graphs": each a chain of temporaries and one output kept live.
    let step = |width: usize| -> Vec<Op> {
        vec![
            Op::Alloc(4 * width, 512), // 0: activation
            Op::Alloc(2 * width, 512), // 1: activation
            Op::Alloc(4 * width, 512), // 2: gradient
            Op::Free(0),
            Op::Alloc(width, 512), // 3: output, outlives the graph
            Op::Free(2),
            Op::Free(1),
        ]
    };
    let (a, b) = (step(MIB), step(3 * MIB / 2));
    let mut h = Harness::new(8 * GIB, 0);
    let (rec_a, out_a) = record(&h.alloc, &a);
    let (rec_b, out_b) = record(&h.alloc, &b);
    for p in out_a.into_iter().chain(out_b) {
        h.alloc.free(p).unwrap();
    }
    let pool = h.alloc.create_planned_pool(&[&rec_a, &rec_b]).unwrap();
    h.pools.push(pool.clone());
    let plan = pool.plan_stats().unwrap();
    let (peak_a, peak_b) = (rec_a.peak_live_bytes(0), rec_b.peak_live_bytes(0));
    assert_eq!((peak_a, peak_b), (10 * MIB, 15 * MIB));
    // The lower bound: B's peak plus A's output, live while B runs.
    assert_eq!(plan.peak_live_bytes, 16 * MIB);
    assert!(plan.planned_bytes < peak_a + peak_b);
    assert!(
        plan.planned_bytes as f64 <= 1.05 * plan.peak_live_bytes as f64,
        "planned {} for a bound of {}",
        plan.planned_bytes,
        plan.peak_live_bytes
    );

    // Capture A, then B (A's output still live), then both again in the
    // other order after freeing the outputs.
    let live_a = capture(&mut h, 0, &a);
    pool.start_plan(1).unwrap();
    let live_b = capture(&mut h, 0, &b);
    let s = pool.plan_stats().unwrap();
    assert_eq!((s.planned_hits, s.fallbacks), (8, 0));
    for p in live_a.into_iter().chain(live_b) {
        h.free_block(p);
    }
    pool.start_plan(1).unwrap();
    let live_b = capture(&mut h, 0, &b);
    pool.start_plan(0).unwrap();
    let live_a = capture(&mut h, 0, &a);
    let s = pool.plan_stats().unwrap();
    assert_eq!((s.planned_hits, s.fallbacks), (16, 0));
    assert_eq!(pool.stats().reserved_bytes, plan.planned_bytes);
    drop((live_a, live_b));
    let refused = pool.start_plan(2);
    drop(pool);
    assert_eq!(
        refused,
        Err(Error::NoSuchPlan {
            pool: h.pools[0].id(),
            plan: 2,
            plans: 2
        })
    );
    h.teardown();
}

#[test]
fn a_stream_recording_sees_every_thread_and_plans_per_stream() {
    let mut h = Harness::new(8 * GIB, 0);
    let stream = h.backend.host().create_stream();
    let alloc = &h.alloc;
    let guard = alloc.start_recording_on(0, stream).unwrap();
    // Another thread allocates on the stream; this thread on the default
    // stream (not recorded).
    let p = std::thread::scope(|s| {
        s.spawn(|| alloc.allocate_on(0, stream, 3 * MIB, 512).unwrap())
            .join()
            .unwrap()
    });
    let q = alloc.allocate(MIB, 512).unwrap();
    alloc.free(p).unwrap();
    let r = alloc.allocate_on(0, stream, 2 * MIB, 512).unwrap();
    let rec = guard.finish();
    assert_eq!((rec.len(), rec.outliving()), (2, 1));
    alloc.free(q).unwrap();
    alloc.free(r).unwrap();
    let pool = alloc.create_planned_pool(&[&rec]).unwrap();
    assert_eq!(pool.plan_stats().unwrap().planned_bytes, 3 * MIB);
    h.pools.push(pool.clone());
    // Served on the stream; a request on another stream falls back.
    h.enter(0);
    let a = {
        let _s = graphalloc::use_stream(stream);
        h.allocate(3 * MIB, 512).unwrap()
    };
    let b = h.allocate(2 * MIB, 512).unwrap();
    h.check();
    let s = pool.plan_stats().unwrap();
    assert_eq!((s.planned_hits, s.fallbacks), (1, 1));
    h.exit_all();
    h.free_block(a.ptr);
    h.free_block(b.ptr);
    let plain = h.alloc.create_pool();
    assert_eq!(
        plain.start_plan(0),
        Err(Error::NoSuchPlan {
            pool: plain.id(),
            plan: 0,
            plans: 0
        })
    );
    assert!(!plain.is_planned() && pool.is_planned());
    drop((plain, pool));
    h.teardown();
}

#[test]
fn a_thrown_away_capture_records_too_and_edge_cases_fall_back() {
    let mut h = Harness::new(8 * GIB, 0);
    let ops = program(99, 30);
    // Recorded while in graph mode on a scratch pool (a capture to throw
    // away): the same sequence as an eager run.
    let scratch = h.alloc.create_pool();
    let (rec, out) = {
        let _g = h.alloc.enter_graph_mode(&scratch).unwrap();
        record(&h.alloc, &ops)
    };
    for p in out {
        h.alloc.free(p).unwrap();
    }
    let (eager, out) = record(&h.alloc, &ops);
    for p in out {
        h.alloc.free(p).unwrap();
    }
    assert_eq!(rec, eager);
    drop(scratch);

    // No recording at all, or an empty one: every allocation grows.
    for recs in [vec![], vec![Recording::default()]] {
        let refs: Vec<&Recording> = recs.iter().collect();
        let pool = h.alloc.create_planned_pool(&refs).unwrap();
        assert_eq!(pool.stats().reserved_bytes, 0);
        h.pools.push(pool.clone());
        let slot = h.pools.len() - 1;
        let live = capture(&mut h, slot, &ops[..6]);
        let s = pool.plan_stats().unwrap();
        assert_eq!((s.planned_hits, s.fallbacks), (0, 1));
        for p in live {
            h.free_block(p);
        }
    }

    // Record, plan and capture in one call.
    let alloc = &h.alloc;
    let run = || {
        let a = alloc.allocate(3 * MIB, 512).unwrap();
        let b = alloc.allocate(MIB, 512).unwrap();
        alloc.free(a).unwrap();
        b
    };
    let (pool, eager_b, captured_b) = alloc.plan_and_capture(run, run).unwrap();
    let s = pool.plan_stats().unwrap();
    assert_eq!(
        (s.planned_hits, s.fallbacks, s.planned_bytes),
        (2, 0, 4 * MIB)
    );
    assert_eq!(alloc.pool_of(captured_b), Some(pool.id()));
    assert_eq!(alloc.pool_of(eager_b), None);
    alloc.free(eager_b).unwrap();
    alloc.free(captured_b).unwrap();
    drop(pool);
    h.teardown();
}
