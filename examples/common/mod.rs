//! Shared by the examples (and the GPU tests): a handful of f32 kernels as
//! hand-written PTX, run on a CUDA stream through cudarc, or on the host
//! backend as plain Rust with the very same floating-point operations (so
//! both give bit-identical results), and graph capture (or, on the host, its
//! simulation: re-running the captured closure).
#![allow(dead_code)]

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use graphalloc::tensor::DeviceBuffer;
use graphalloc::{Allocator, BackendKind};
use std::sync::Arc;

/// Errors of the examples: graphalloc's, cudarc's, or a failed check.
pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// f32 kernels. Every multiply and add is a separately rounded `.rn`
/// instruction (never fused into an FMA), so the host versions below give
/// the same bits.
pub const KERNELS_PTX: &str = r#"
.version 7.0
.target sm_70
.address_size 64

// y[i] = a * x[i] + y[i]
.visible .entry saxpy(.param .u64 p_y, .param .u64 p_x, .param .f32 p_a, .param .u64 p_n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<5>;
    .reg .b64 %rd<9>;
    ld.param.u64 %rd1, [p_y];
    ld.param.u64 %rd2, [p_x];
    ld.param.f32 %f1, [p_a];
    ld.param.u64 %rd3, [p_n];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd4, %r1, %r2;
    cvt.u64.u32 %rd5, %r3;
    add.u64 %rd4, %rd4, %rd5;
    setp.ge.u64 %p1, %rd4, %rd3;
    @%p1 bra DONE;
    shl.b64 %rd6, %rd4, 2;
    add.u64 %rd7, %rd2, %rd6;
    add.u64 %rd8, %rd1, %rd6;
    ld.global.f32 %f2, [%rd7];
    ld.global.f32 %f3, [%rd8];
    mul.rn.f32 %f4, %f1, %f2;
    add.rn.f32 %f4, %f4, %f3;
    st.global.f32 [%rd8], %f4;
DONE:
    ret;
}

// out[i] = a * x[i]
.visible .entry scale(.param .u64 p_out, .param .u64 p_x, .param .f32 p_a, .param .u64 p_n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<9>;
    ld.param.u64 %rd1, [p_out];
    ld.param.u64 %rd2, [p_x];
    ld.param.f32 %f1, [p_a];
    ld.param.u64 %rd3, [p_n];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd4, %r1, %r2;
    cvt.u64.u32 %rd5, %r3;
    add.u64 %rd4, %rd4, %rd5;
    setp.ge.u64 %p1, %rd4, %rd3;
    @%p1 bra DONE;
    shl.b64 %rd6, %rd4, 2;
    add.u64 %rd7, %rd2, %rd6;
    add.u64 %rd8, %rd1, %rd6;
    ld.global.f32 %f2, [%rd7];
    mul.rn.f32 %f3, %f1, %f2;
    st.global.f32 [%rd8], %f3;
DONE:
    ret;
}

// out[i] = a[i] + b[i]
.visible .entry add(.param .u64 p_out, .param .u64 p_a, .param .u64 p_b, .param .u64 p_n)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<4>;
    .reg .b64 %rd<11>;
    ld.param.u64 %rd1, [p_out];
    ld.param.u64 %rd2, [p_a];
    ld.param.u64 %rd3, [p_b];
    ld.param.u64 %rd4, [p_n];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd5, %r1, %r2;
    cvt.u64.u32 %rd6, %r3;
    add.u64 %rd5, %rd5, %rd6;
    setp.ge.u64 %p1, %rd5, %rd4;
    @%p1 bra DONE;
    shl.b64 %rd7, %rd5, 2;
    add.u64 %rd8, %rd2, %rd7;
    add.u64 %rd9, %rd3, %rd7;
    add.u64 %rd10, %rd1, %rd7;
    ld.global.f32 %f1, [%rd8];
    ld.global.f32 %f2, [%rd9];
    add.rn.f32 %f3, %f1, %f2;
    st.global.f32 [%rd10], %f3;
DONE:
    ret;
}

// Linear regression, one thread per sample i < n:
// r[i] = (sum_j X[i*d + j] * w[j]) + w[d] - y[i]
.visible .entry linreg_residual(.param .u64 p_r, .param .u64 p_x, .param .u64 p_w,
    .param .u64 p_y, .param .u64 p_n, .param .u64 p_d)
{
    .reg .pred %p<3>;
    .reg .b32 %r<4>;
    .reg .f32 %f<5>;
    .reg .b64 %rd<16>;
    ld.param.u64 %rd1, [p_r];
    ld.param.u64 %rd2, [p_x];
    ld.param.u64 %rd3, [p_w];
    ld.param.u64 %rd4, [p_y];
    ld.param.u64 %rd5, [p_n];
    ld.param.u64 %rd6, [p_d];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    cvta.to.global.u64 %rd4, %rd4;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd7, %r1, %r2;
    cvt.u64.u32 %rd8, %r3;
    add.u64 %rd7, %rd7, %rd8;
    setp.ge.u64 %p1, %rd7, %rd5;
    @%p1 bra DONE;
    mul.lo.u64 %rd9, %rd7, %rd6;
    shl.b64 %rd9, %rd9, 2;
    add.u64 %rd9, %rd2, %rd9;
    mov.u64 %rd10, %rd3;
    mov.u64 %rd11, 0;
    mov.f32 %f1, 0f00000000;
LOOP:
    setp.ge.u64 %p2, %rd11, %rd6;
    @%p2 bra END_LOOP;
    ld.global.f32 %f2, [%rd9];
    ld.global.f32 %f3, [%rd10];
    mul.rn.f32 %f4, %f2, %f3;
    add.rn.f32 %f1, %f1, %f4;
    add.u64 %rd9, %rd9, 4;
    add.u64 %rd10, %rd10, 4;
    add.u64 %rd11, %rd11, 1;
    bra LOOP;
END_LOOP:
    ld.global.f32 %f2, [%rd10];
    add.rn.f32 %f1, %f1, %f2;
    shl.b64 %rd12, %rd7, 2;
    add.u64 %rd13, %rd4, %rd12;
    ld.global.f32 %f3, [%rd13];
    sub.rn.f32 %f1, %f1, %f3;
    add.u64 %rd14, %rd1, %rd12;
    st.global.f32 [%rd14], %f1;
DONE:
    ret;
}

// Linear regression gradients and loss, one block of at least d + 2 threads,
// each summing sequentially (deterministic):
// t < d:      g[t] = two_over_n * sum_i r[i] * X[i*d + t]
// t == d:     g[d] = two_over_n * sum_i r[i]
// t == d + 1: losses[*step] = inv_n * sum_i r[i] * r[i] (if *step < cap); *step += 1
.visible .entry linreg_grad(.param .u64 p_g, .param .u64 p_losses, .param .u64 p_step,
    .param .u64 p_x, .param .u64 p_r, .param .u64 p_n, .param .u64 p_d,
    .param .f32 p_two_over_n, .param .f32 p_inv_n, .param .u64 p_cap)
{
    .reg .pred %p<6>;
    .reg .b32 %r<2>;
    .reg .f32 %f<8>;
    .reg .b64 %rd<18>;
    ld.param.u64 %rd1, [p_g];
    ld.param.u64 %rd2, [p_losses];
    ld.param.u64 %rd3, [p_step];
    ld.param.u64 %rd4, [p_x];
    ld.param.u64 %rd5, [p_r];
    ld.param.u64 %rd6, [p_n];
    ld.param.u64 %rd7, [p_d];
    ld.param.f32 %f6, [p_two_over_n];
    ld.param.f32 %f7, [p_inv_n];
    ld.param.u64 %rd8, [p_cap];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    cvta.to.global.u64 %rd3, %rd3;
    cvta.to.global.u64 %rd4, %rd4;
    cvta.to.global.u64 %rd5, %rd5;
    mov.u32 %r1, %tid.x;
    cvt.u64.u32 %rd9, %r1;
    add.u64 %rd10, %rd7, 1;
    setp.gt.u64 %p1, %rd9, %rd10;
    @%p1 bra DONE;
    setp.lt.u64 %p2, %rd9, %rd7;
    setp.eq.u64 %p3, %rd9, %rd7;
    mov.f32 %f1, 0f00000000;
    mov.u64 %rd11, 0;
    mov.u64 %rd12, %rd5;
    shl.b64 %rd13, %rd9, 2;
    add.u64 %rd13, %rd4, %rd13;
    shl.b64 %rd14, %rd7, 2;
LOOP:
    setp.ge.u64 %p4, %rd11, %rd6;
    @%p4 bra END_LOOP;
    ld.global.f32 %f2, [%rd12];
    @%p2 bra WEIGHT;
    @%p3 bra BIAS;
    mul.rn.f32 %f3, %f2, %f2;
    add.rn.f32 %f1, %f1, %f3;
    bra NEXT;
WEIGHT:
    ld.global.f32 %f4, [%rd13];
    mul.rn.f32 %f3, %f2, %f4;
    add.rn.f32 %f1, %f1, %f3;
    bra NEXT;
BIAS:
    add.rn.f32 %f1, %f1, %f2;
NEXT:
    add.u64 %rd11, %rd11, 1;
    add.u64 %rd12, %rd12, 4;
    add.u64 %rd13, %rd13, %rd14;
    bra LOOP;
END_LOOP:
    @%p2 bra STORE_GRAD;
    @%p3 bra STORE_GRAD;
    mul.rn.f32 %f5, %f1, %f7;
    ld.global.u64 %rd15, [%rd3];
    setp.ge.u64 %p5, %rd15, %rd8;
    @%p5 bra BUMP;
    shl.b64 %rd16, %rd15, 2;
    add.u64 %rd16, %rd2, %rd16;
    st.global.f32 [%rd16], %f5;
BUMP:
    add.u64 %rd15, %rd15, 1;
    st.global.u64 [%rd3], %rd15;
    bra DONE;
STORE_GRAD:
    mul.rn.f32 %f5, %f1, %f6;
    shl.b64 %rd17, %rd9, 2;
    add.u64 %rd17, %rd1, %rd17;
    st.global.f32 [%rd17], %f5;
DONE:
    ret;
}

// w[j] = w[j] - lr * g[j]
.visible .entry sgd(.param .u64 p_w, .param .u64 p_g, .param .f32 p_lr, .param .u64 p_m)
{
    .reg .pred %p<2>;
    .reg .b32 %r<4>;
    .reg .f32 %f<6>;
    .reg .b64 %rd<9>;
    ld.param.u64 %rd1, [p_w];
    ld.param.u64 %rd2, [p_g];
    ld.param.f32 %f1, [p_lr];
    ld.param.u64 %rd3, [p_m];
    cvta.to.global.u64 %rd1, %rd1;
    cvta.to.global.u64 %rd2, %rd2;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd4, %r1, %r2;
    cvt.u64.u32 %rd5, %r3;
    add.u64 %rd4, %rd4, %rd5;
    setp.ge.u64 %p1, %rd4, %rd3;
    @%p1 bra DONE;
    shl.b64 %rd6, %rd4, 2;
    add.u64 %rd7, %rd1, %rd6;
    add.u64 %rd8, %rd2, %rd6;
    ld.global.f32 %f2, [%rd7];
    ld.global.f32 %f3, [%rd8];
    mul.rn.f32 %f4, %f1, %f3;
    sub.rn.f32 %f5, %f2, %f4;
    st.global.f32 [%rd7], %f5;
DONE:
    ret;
}
"#;

/// The host versions of the kernels, on slices, with the same operations in
/// the same order (Rust never fuses `a * b + c`).
pub mod cpu {
    /// `y[i] = a * x[i] + y[i]`
    pub fn saxpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    /// `out[i] = a * x[i]`
    pub fn scale(out: &mut [f32], a: f32, x: &[f32]) {
        for (o, &x) in out.iter_mut().zip(x) {
            *o = a * x;
        }
    }

    /// `out[i] = a[i] + b[i]`
    pub fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
        for ((o, &a), &b) in out.iter_mut().zip(a).zip(b) {
            *o = a + b;
        }
    }

    /// `r[i] = X[i, :] . w[..d] + w[d] - y[i]`
    pub fn linreg_residual(r: &mut [f32], x: &[f32], w: &[f32], y: &[f32], d: usize) {
        for (i, r) in r.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for j in 0..d {
                acc += x[i * d + j] * w[j];
            }
            acc += w[d];
            *r = acc - y[i];
        }
    }

    /// Gradients of the mean squared error into `g` (`d + 1` values) and the
    /// loss into `losses[*step]`; `*step += 1`.
    pub fn linreg_grad(
        g: &mut [f32],
        losses: &mut [f32],
        step: &mut u64,
        x: &[f32],
        r: &[f32],
        d: usize,
    ) {
        let n = r.len();
        let (two_over_n, inv_n) = (2.0 / n as f32, 1.0 / n as f32);
        for (t, g) in g.iter_mut().enumerate().take(d) {
            let mut acc = 0.0f32;
            for i in 0..n {
                acc += r[i] * x[i * d + t];
            }
            *g = acc * two_over_n;
        }
        let mut acc = 0.0f32;
        for &r in r {
            acc += r;
        }
        g[d] = acc * two_over_n;
        let mut acc = 0.0f32;
        for &r in r {
            acc += r * r;
        }
        if (*step as usize) < losses.len() {
            losses[*step as usize] = acc * inv_n;
        }
        *step += 1;
    }

    /// `w[j] = w[j] - lr * g[j]`
    pub fn sgd(w: &mut [f32], g: &[f32], lr: f32) {
        for (w, &g) in w.iter_mut().zip(g) {
            *w -= lr * g;
        }
    }
}

/// The kernels, loaded into the device's primary context.
pub struct Kernels {
    saxpy: CudaFunction,
    scale: CudaFunction,
    add: CudaFunction,
    linreg_residual: CudaFunction,
    linreg_grad: CudaFunction,
    sgd: CudaFunction,
}

impl Kernels {
    /// Loads [`KERNELS_PTX`] into `ctx`.
    pub fn load(ctx: &Arc<CudaContext>) -> Res<Self> {
        let module = ctx.load_module(Ptx::from_src(KERNELS_PTX))?;
        Ok(Kernels {
            saxpy: module.load_function("saxpy")?,
            scale: module.load_function("scale")?,
            add: module.load_function("add")?,
            linreg_residual: module.load_function("linreg_residual")?,
            linreg_grad: module.load_function("linreg_grad")?,
            sgd: module.load_function("sgd")?,
        })
    }
}

/// Where the kernels run: a CUDA stream, or the host.
pub enum Engine {
    /// CUDA device 0 through cudarc, on one non-blocking stream.
    Cuda {
        /// The device's primary context (the one graphalloc allocates in).
        ctx: Arc<CudaContext>,
        /// The stream every kernel and capture uses.
        stream: Arc<CudaStream>,
        /// The loaded kernels.
        kernels: Kernels,
    },
    /// The host backend: kernels are Rust loops over copies of the buffers.
    Host,
}

type Buf<'a> = DeviceBuffer<'a, f32>;

fn check_len(what: &str, a: usize, b: usize) -> Res<()> {
    if a == b {
        Ok(())
    } else {
        Err(format!("{what}: lengths {a} and {b} differ").into())
    }
}

impl Engine {
    /// CUDA when `alloc` allocates CUDA memory, else the host.
    pub fn new(alloc: &Allocator) -> Res<Self> {
        if alloc.backend_kind() != BackendKind::Cuda {
            return Ok(Engine::Host);
        }
        let ctx = CudaContext::new(0)?;
        let stream = ctx.new_stream()?;
        let kernels = Kernels::load(&ctx)?;
        Ok(Engine::Cuda {
            ctx,
            stream,
            kernels,
        })
    }

    /// Whether kernels run on a GPU (and graphs can be captured).
    pub fn is_cuda(&self) -> bool {
        matches!(self, Engine::Cuda { .. })
    }

    /// A one-line description of where this runs.
    pub fn describe(&self) -> String {
        match self {
            Engine::Cuda { ctx, .. } => format!(
                "CUDA device {} ({})",
                ctx.ordinal(),
                ctx.name().unwrap_or_else(|_| "unknown".into())
            ),
            Engine::Host => "the HOST backend (no CUDA driver or device found)".into(),
        }
    }

    /// The stream handle allocations should be tagged with
    /// ([`graphalloc::use_stream`]): the CUDA stream, or the default stream.
    pub fn stream_handle(&self) -> u64 {
        match self {
            Engine::Cuda { stream, .. } => stream.cu_stream() as u64,
            Engine::Host => graphalloc::DEFAULT_STREAM,
        }
    }

    /// Waits for every kernel queued so far, and for graphalloc's own
    /// copies (the whole context).
    pub fn synchronize(&self) -> Res<()> {
        if let Engine::Cuda { ctx, stream, .. } = self {
            stream.synchronize()?;
            ctx.synchronize()?;
        }
        Ok(())
    }

    fn elementwise(n: usize) -> LaunchConfig {
        LaunchConfig::for_num_elems(n as u32)
    }

    /// `y = a * x + y`
    pub fn saxpy(&self, y: &mut Buf<'_>, a: f32, x: &Buf<'_>) -> Res<()> {
        check_len("saxpy", y.len(), x.len())?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let n = y.len() as u64;
                let (yv, xv) = (y.on_stream_mut(stream)?, x.on_stream(stream)?);
                let mut launch = stream.launch_builder(&kernels.saxpy);
                launch.arg(&yv).arg(&xv).arg(&a).arg(&n);
                // SAFETY: the kernel reads and writes `n` f32 of two live
                // buffers of exactly `n` elements, bound to this stream.
                unsafe { launch.launch(Self::elementwise(n as usize)) }?;
            }
            Engine::Host => {
                let mut yh = y.to_vec()?;
                cpu::saxpy(&mut yh, a, &x.to_vec()?);
                y.copy_from_host(&yh)?;
            }
        }
        Ok(())
    }

    /// `out = a * x`
    pub fn scale(&self, out: &mut Buf<'_>, a: f32, x: &Buf<'_>) -> Res<()> {
        check_len("scale", out.len(), x.len())?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let n = out.len() as u64;
                let (ov, xv) = (out.on_stream_mut(stream)?, x.on_stream(stream)?);
                let mut launch = stream.launch_builder(&kernels.scale);
                launch.arg(&ov).arg(&xv).arg(&a).arg(&n);
                // SAFETY: reads `n` f32 of `x`, writes `n` f32 of `out`; both
                // are live buffers of `n` elements bound to this stream.
                unsafe { launch.launch(Self::elementwise(n as usize)) }?;
            }
            Engine::Host => {
                let mut oh = vec![0.0; out.len()];
                cpu::scale(&mut oh, a, &x.to_vec()?);
                out.copy_from_host(&oh)?;
            }
        }
        Ok(())
    }

    /// `out = a + b`
    pub fn add(&self, out: &mut Buf<'_>, a: &Buf<'_>, b: &Buf<'_>) -> Res<()> {
        check_len("add", out.len(), a.len())?;
        check_len("add", out.len(), b.len())?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let n = out.len() as u64;
                let ov = out.on_stream_mut(stream)?;
                let (av, bv) = (a.on_stream(stream)?, b.on_stream(stream)?);
                let mut launch = stream.launch_builder(&kernels.add);
                launch.arg(&ov).arg(&av).arg(&bv).arg(&n);
                // SAFETY: reads `n` f32 of `a` and `b`, writes `n` f32 of
                // `out`; all are live buffers of `n` elements on this stream.
                unsafe { launch.launch(Self::elementwise(n as usize)) }?;
            }
            Engine::Host => {
                let mut oh = vec![0.0; out.len()];
                cpu::add(&mut oh, &a.to_vec()?, &b.to_vec()?);
                out.copy_from_host(&oh)?;
            }
        }
        Ok(())
    }

    /// Linear regression residuals: `r = X w[..d] + w[d] - y` for `X` of
    /// `r.len()` rows and `d` columns.
    pub fn linreg_residual(
        &self,
        r: &mut Buf<'_>,
        x: &Buf<'_>,
        w: &Buf<'_>,
        y: &Buf<'_>,
        d: usize,
    ) -> Res<()> {
        let n = r.len();
        check_len("linreg_residual x", x.len(), n * d)?;
        check_len("linreg_residual w", w.len(), d + 1)?;
        check_len("linreg_residual y", y.len(), n)?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let (n64, d64) = (n as u64, d as u64);
                let rv = r.on_stream_mut(stream)?;
                let (xv, wv, yv) = (
                    x.on_stream(stream)?,
                    w.on_stream(stream)?,
                    y.on_stream(stream)?,
                );
                let mut launch = stream.launch_builder(&kernels.linreg_residual);
                launch
                    .arg(&rv)
                    .arg(&xv)
                    .arg(&wv)
                    .arg(&yv)
                    .arg(&n64)
                    .arg(&d64);
                // SAFETY: every buffer has the length checked above, which
                // is exactly what the kernel indexes; all are bound here.
                unsafe { launch.launch(Self::elementwise(n)) }?;
            }
            Engine::Host => {
                let mut rh = vec![0.0; n];
                cpu::linreg_residual(&mut rh, &x.to_vec()?, &w.to_vec()?, &y.to_vec()?, d);
                r.copy_from_host(&rh)?;
            }
        }
        Ok(())
    }

    /// Gradients into `g` (`d + 1` values) and the loss into
    /// `losses[step[0]]`, then `step[0] += 1`.
    pub fn linreg_grad(
        &self,
        g: &mut Buf<'_>,
        losses: &mut Buf<'_>,
        step: &mut DeviceBuffer<'_, u64>,
        x: &Buf<'_>,
        r: &Buf<'_>,
        d: usize,
    ) -> Res<()> {
        let n = r.len();
        check_len("linreg_grad g", g.len(), d + 1)?;
        check_len("linreg_grad x", x.len(), n * d)?;
        check_len("linreg_grad step", step.len(), 1)?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let (n64, d64, cap) = (n as u64, d as u64, losses.len() as u64);
                let (two_over_n, inv_n) = (2.0 / n as f32, 1.0 / n as f32);
                let gv = g.on_stream_mut(stream)?;
                let lv = losses.on_stream_mut(stream)?;
                let sv = step.on_stream_mut(stream)?;
                let (xv, rv) = (x.on_stream(stream)?, r.on_stream(stream)?);
                let mut launch = stream.launch_builder(&kernels.linreg_grad);
                launch
                    .arg(&gv)
                    .arg(&lv)
                    .arg(&sv)
                    .arg(&xv)
                    .arg(&rv)
                    .arg(&n64)
                    .arg(&d64)
                    .arg(&two_over_n)
                    .arg(&inv_n)
                    .arg(&cap);
                let threads = (d as u32 + 2).next_multiple_of(32);
                let cfg = LaunchConfig {
                    grid_dim: (1, 1, 1),
                    block_dim: (threads, 1, 1),
                    shared_mem_bytes: 0,
                };
                // SAFETY: lengths checked above; the loss is written only
                // below `cap`, the length of `losses`.
                unsafe { launch.launch(cfg) }?;
            }
            Engine::Host => {
                let mut gh = vec![0.0; d + 1];
                let mut lh = losses.to_vec()?;
                let mut sh = step.to_vec()?;
                cpu::linreg_grad(&mut gh, &mut lh, &mut sh[0], &x.to_vec()?, &r.to_vec()?, d);
                g.copy_from_host(&gh)?;
                losses.copy_from_host(&lh)?;
                step.copy_from_host(&sh)?;
            }
        }
        Ok(())
    }

    /// `w = w - lr * g`
    pub fn sgd(&self, w: &mut Buf<'_>, g: &Buf<'_>, lr: f32) -> Res<()> {
        check_len("sgd", w.len(), g.len())?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let m = w.len() as u64;
                let (wv, gv) = (w.on_stream_mut(stream)?, g.on_stream(stream)?);
                let mut launch = stream.launch_builder(&kernels.sgd);
                launch.arg(&wv).arg(&gv).arg(&lr).arg(&m);
                // SAFETY: `m` elements of two live buffers of `m` elements.
                unsafe { launch.launch(Self::elementwise(m as usize)) }?;
            }
            Engine::Host => {
                let mut wh = w.to_vec()?;
                cpu::sgd(&mut wh, &g.to_vec()?, lr);
                w.copy_from_host(&wh)?;
            }
        }
        Ok(())
    }

    /// Captures what `work` queues into a CUDA graph (GLOBAL capture mode)
    /// and returns it without running it. On the host, where nothing can be
    /// captured, returns `work` itself, to be re-run by each "replay".
    ///
    /// `work` runs once here, on the calling thread, in whatever graphalloc
    /// mode it sets up (graph mode, normally).
    pub fn capture<'w>(&self, mut work: impl FnMut() -> Res<()> + 'w) -> Res<Captured<'w>> {
        match self {
            Engine::Cuda { stream, .. } => {
                stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_GLOBAL)?;
                let worked = work();
                // End the capture whatever happened, so the stream is usable.
                let ended = stream.end_capture(CUgraphInstantiate_flags(0));
                worked?;
                let graph = ended?.ok_or("the capture produced no graph")?;
                Ok(Captured::Graph(graph))
            }
            Engine::Host => Ok(Captured::Rerun(Box::new(work))),
        }
    }
}

/// A captured step: a CUDA graph, or (on the host) the closure to re-run.
pub enum Captured<'w> {
    /// An instantiated CUDA graph; replays run on the capturing stream.
    Graph(CudaGraph),
    /// The host's stand-in: the work itself, re-run on each replay.
    Rerun(Box<dyn FnMut() -> Res<()> + 'w>),
}

impl Captured<'_> {
    /// Runs the captured work once more: launches the graph (asynchronously,
    /// on the capturing stream), or re-runs the closure.
    pub fn replay(&mut self) -> Res<()> {
        match self {
            Captured::Graph(graph) => Ok(graph.launch()?),
            Captured::Rerun(work) => work(),
        }
    }
}

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
