//! Byte-level kernels and a bare CUDA allocator, for the GPU tests that work
//! on raw blocks rather than the examples' engine.

use graphalloc::{Allocator, BackendChoice, Config};
use std::io::Write;

/// `fill(dst, n, value)`: dst[i] = value; `spin_copy(dst, src, n, ns)`: spin
/// for `ns` nanoseconds, then dst[i] = src[i].
pub const BYTE_KERNELS: &str = r#"
.version 7.0
.target sm_70
.address_size 64

.visible .entry fill(.param .u64 dst, .param .u64 n, .param .u32 value)
{
    .reg .pred %p<2>;
    .reg .b32 %r<5>;
    .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [dst];
    ld.param.u64 %rd2, [n];
    ld.param.u32 %r4, [value];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd3, %r1, %r2;
    cvt.u64.u32 %rd4, %r3;
    add.u64 %rd3, %rd3, %rd4;
    setp.ge.u64 %p1, %rd3, %rd2;
    @%p1 bra DONE;
    add.u64 %rd5, %rd1, %rd3;
    st.global.u8 [%rd5], %r4;
DONE:
    ret;
}

.visible .entry spin_copy(.param .u64 dst, .param .u64 src, .param .u64 n, .param .u64 ns)
{
    .reg .pred %p<3>;
    .reg .b32 %r<5>;
    .reg .b64 %rd<12>;
    ld.param.u64 %rd1, [dst];
    ld.param.u64 %rd2, [src];
    ld.param.u64 %rd3, [n];
    ld.param.u64 %rd4, [ns];
    mov.u64 %rd5, %globaltimer;
    add.u64 %rd6, %rd5, %rd4;
SPIN:
    mov.u64 %rd7, %globaltimer;
    setp.lt.u64 %p1, %rd7, %rd6;
    @%p1 bra SPIN;
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mul.wide.u32 %rd8, %r1, %r2;
    cvt.u64.u32 %rd9, %r3;
    add.u64 %rd8, %rd8, %rd9;
    setp.ge.u64 %p2, %rd8, %rd3;
    @%p2 bra DONE;
    add.u64 %rd10, %rd2, %rd8;
    ld.global.u8 %r4, [%rd10];
    add.u64 %rd11, %rd1, %rd8;
    st.global.u8 [%rd11], %r4;
DONE:
    ret;
}
"#;

/// A CUDA allocator on every device, or `None` (saying so on stderr, past
/// the test harness's capture) where no driver or fewer than `devices`
/// devices are present.
pub fn cuda_allocator(test: &str, devices: usize) -> Option<Allocator> {
    let found = if graphalloc::cuda_driver_available() {
        graphalloc::CudaBackend::device_count()
    } else {
        0
    };
    if found < devices {
        let _ = writeln!(
            std::io::stderr(),
            "skipping {test}: needs {devices} CUDA device(s), found {found}"
        );
        return None;
    }
    let config = Config {
        backend: BackendChoice::Cuda,
        ..Config::default()
    };
    Some(Allocator::new(config).expect("a CUDA allocator"))
}
