//! The linear-regression workload of the training example and tests: data,
//! model state, one SGD step on an [`Engine`], and the same training on the
//! host.

use crate::{cpu, Engine, Res};
use graphalloc::tensor::DeviceBuffer;
use graphalloc::Allocator;

/// A deterministic pseudo-random f32 in [-1, 1) for index `i` and `seed`.
pub fn noise(i: usize, seed: u64) -> f32 {
    let mut z = (i as u64)
        .wrapping_add(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

/// A linear-regression data set: `n` rows of `d` features and targets
/// `y = X w_true + b_true + 0.01 noise`.
pub fn regression_data(n: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let x: Vec<f32> = (0..n * d).map(|i| noise(i, 1)).collect();
    let w_true: Vec<f32> = (0..d).map(|j| (j as f32 - d as f32 / 2.0) * 0.5).collect();
    let y = (0..n)
        .map(|i| {
            let dot: f32 = (0..d).map(|j| x[i * d + j] * w_true[j]).sum();
            dot + 0.75 + 0.01 * noise(i, 2)
        })
        .collect();
    (x, y)
}

/// The state of the linear-regression model: parameters `w` (`d` weights
/// and the bias), the loss of every iteration, and the iteration counter
/// the loss kernel uses as an index (so a replayed graph writes each
/// iteration's loss to its own slot).
pub struct LinReg<'a> {
    /// `d + 1` parameters, the bias last.
    pub w: DeviceBuffer<'a, f32>,
    /// One loss per iteration.
    pub losses: DeviceBuffer<'a, f32>,
    /// `[iterations run]`.
    pub step: DeviceBuffer<'a, u64>,
}

impl<'a> LinReg<'a> {
    /// Zero parameters, room for `iters` losses; allocated in the calling
    /// thread's current mode.
    pub fn new(alloc: &'a Allocator, d: usize, iters: usize) -> Res<Self> {
        Ok(LinReg {
            w: DeviceBuffer::zeros(alloc, d + 1)?,
            losses: DeviceBuffer::zeros(alloc, iters)?,
            step: DeviceBuffer::zeros(alloc, 1)?,
        })
    }
}

/// One SGD step on the mean squared error. Allocates its temporaries (the
/// residuals and the gradient) from `alloc` in the calling thread's mode
/// and frees them before returning, as a training framework would.
pub fn train_step(
    engine: &Engine,
    alloc: &Allocator,
    x: &DeviceBuffer<'_, f32>,
    y: &DeviceBuffer<'_, f32>,
    model: &mut LinReg<'_>,
    d: usize,
    lr: f32,
) -> Res<()> {
    // SAFETY: both temporaries are written in full by a kernel before any
    // kernel reads them.
    let mut r = unsafe { DeviceBuffer::<f32>::uninit(alloc, y.len())? };
    engine.linreg_residual(&mut r, x, &model.w, y, d)?;
    // SAFETY: as above.
    let mut g = unsafe { DeviceBuffer::<f32>::uninit(alloc, d + 1)? };
    engine.linreg_grad(&mut g, &mut model.losses, &mut model.step, x, &r, d)?;
    engine.sgd(&mut model.w, &g, lr)?;
    Ok(())
}

/// The same training on the host: the losses and the final parameters.
pub fn cpu_train(x: &[f32], y: &[f32], d: usize, lr: f32, iters: usize) -> (Vec<f32>, Vec<f32>) {
    let n = y.len();
    let (mut w, mut losses, mut step) = (vec![0.0f32; d + 1], vec![0.0f32; iters], 0u64);
    let (mut r, mut g) = (vec![0.0f32; n], vec![0.0f32; d + 1]);
    for _ in 0..iters {
        cpu::linreg_residual(&mut r, x, &w, y, d);
        cpu::linreg_grad(&mut g, &mut losses, &mut step, x, &r, d);
        cpu::sgd(&mut w, &g, lr);
    }
    (losses, w)
}

/// The largest difference between `a` and `b` relative to `max(1, |a|)`.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
        .fold(0.0, f32::max)
}
