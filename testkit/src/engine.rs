//! [`Engine`]: where the kernels run (a CUDA stream through cudarc, or the
//! host as plain Rust with the very same floating-point operations), and
//! graph capture (or, on the host, its simulation: re-running the captured
//! closure).

use crate::{cpu, Res};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaGraph, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;
use graphalloc::tensor::DeviceBuffer;
use graphalloc::{Allocator, BackendKind};
use std::sync::Arc;

/// f32 kernels (`ptx/kernels.ptx`). Every multiply and add is a separately
/// rounded `.rn` instruction (never fused into an FMA), so the host versions
/// in [`cpu`] give the same bits.
pub const KERNELS_PTX: &str = include_str!("../ptx/kernels.ptx");

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
            Engine::Host if graphalloc::cuda_driver_available() => {
                "the HOST backend (chosen by GRAPHALLOC_CONF; a CUDA device is present)".into()
            }
            Engine::Host => "the HOST backend (no CUDA driver or device found)".into(),
        }
    }

    /// The stream handle allocations should be tagged with
    /// ([`graphalloc::use_stream`]): the CUDA stream, registered with `alloc`
    /// on device 0, or the default stream.
    pub fn stream_handle(&self, alloc: &graphalloc::Allocator) -> graphalloc::Result<u64> {
        match self {
            Engine::Cuda { stream, .. } => {
                alloc.register_stream(0, stream)?;
                Ok(stream.cu_stream() as u64)
            }
            Engine::Host => Ok(graphalloc::DEFAULT_STREAM),
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
        self.out_x_scalar("saxpy", |k| &k.saxpy, (y, true), x, a, cpu::saxpy)
    }

    /// `out = a * x`
    pub fn scale(&self, out: &mut Buf<'_>, a: f32, x: &Buf<'_>) -> Res<()> {
        self.out_x_scalar("scale", |k| &k.scale, (out, false), x, a, cpu::scale)
    }

    /// An elementwise kernel of parameters `(out, x, a, n)` that reads `x`,
    /// writes `out` and, if `out.1`, reads it first (else `out` may be
    /// uninitialized); on the host, `host(out, a, x)` on copies.
    fn out_x_scalar(
        &self,
        name: &str,
        kernel: fn(&Kernels) -> &CudaFunction,
        (out, reads_out): (&mut Buf<'_>, bool),
        x: &Buf<'_>,
        a: f32,
        host: fn(&mut [f32], f32, &[f32]),
    ) -> Res<()> {
        check_len(name, out.len(), x.len())?;
        match self {
            Engine::Cuda {
                stream, kernels, ..
            } => {
                let n = out.len() as u64;
                let (ov, xv) = (out.on_stream_mut(stream)?, x.on_stream(stream)?);
                let mut launch = stream.launch_builder(kernel(kernels));
                launch.arg(&ov).arg(&xv).arg(&a).arg(&n);
                // SAFETY: the kernel reads `n` f32 of `x` and reads and writes
                // `n` f32 of `out`; both are live buffers of exactly `n`
                // elements, bound to this stream.
                unsafe { launch.launch(Self::elementwise(n as usize)) }?;
            }
            Engine::Host => {
                let mut oh = if reads_out {
                    out.to_vec()?
                } else {
                    vec![0.0; out.len()]
                };
                host(&mut oh, a, &x.to_vec()?);
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
        let host: fn(&mut [f32], f32, &[f32]) = |w, lr, g| cpu::sgd(w, g, lr);
        self.out_x_scalar("sgd", |k| &k.sgd, (w, true), g, lr, host)
    }

    /// Captures what `work` queues into a CUDA graph (GLOBAL capture mode)
    /// and returns it without running it. On the host, where nothing can be
    /// captured, returns `work` itself, to be re-run by each "replay".
    ///
    /// On CUDA `work` runs once here, on the calling thread, in whatever
    /// graphalloc mode it sets up (graph mode, normally); on the host it
    /// first runs at the first replay.
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
