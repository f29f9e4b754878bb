//! The element types a buffer or tensor holds, and the byte views of host
//! slices that copies use.

use std::fmt;
use std::mem::size_of;

/// The element type of a [`Tensor`](super::Tensor).
///
/// ```
/// use graphalloc::tensor::DType;
/// assert_eq!(DType::BF16.size(), 2);
/// assert_eq!(DType::I64.to_string(), "i64");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE 754 binary32.
    F32,
    /// IEEE 754 binary64.
    F64,
    /// IEEE 754 binary16 (read and written as `u16` bits on the host).
    F16,
    /// bfloat16 (read and written as `u16` bits on the host).
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::F32 | DType::I32 => 4,
            DType::F64 | DType::I64 => 8,
        }
    }

    /// The lower-case name (`"f32"`, `"bf16"`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
        }
    }

    /// Whether host values of type `T` can stand for elements of this dtype:
    /// `T`'s own dtype if it has one (`f32` for [`DType::F32`], ...), else
    /// any type of the same size (`u16` for [`DType::F16`] and
    /// [`DType::BF16`] bits).
    ///
    /// ```
    /// use graphalloc::tensor::DType;
    /// assert!(DType::F32.accepts::<f32>());
    /// assert!(!DType::I32.accepts::<f32>());
    /// assert!(DType::BF16.accepts::<u16>());
    /// ```
    pub fn accepts<T: Element>(self) -> bool {
        match T::DTYPE {
            Some(dtype) => dtype == self,
            None => size_of::<T>() == self.size(),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A plain-old-data type that buffers copy to and from device memory as raw
/// bytes.
///
/// ```
/// use graphalloc::tensor::{DType, Element};
/// assert_eq!(<f32 as Element>::DTYPE, Some(DType::F32));
/// assert_eq!(<u16 as Element>::DTYPE, None); // bits of f16 / bf16
/// ```
///
/// # Safety
/// Implementors must have no padding bytes and no pointers or references,
/// and every bit pattern of `size_of::<Self>()` bytes must be a valid value:
/// bytes written by the device are read back as `Self`.
pub unsafe trait Element: Copy + Send + Sync + fmt::Debug + 'static {
    /// The tensor dtype whose elements are exactly this type, if any.
    const DTYPE: Option<DType>;
}

macro_rules! element {
    ($($t:ty => $d:expr),* $(,)?) => {$(
        // SAFETY: a primitive integer or float: no padding, no pointers, and
        // every bit pattern is a valid value.
        unsafe impl Element for $t {
            const DTYPE: Option<DType> = $d;
        }
    )*};
}

element! {
    f32 => Some(DType::F32),
    f64 => Some(DType::F64),
    i8 => Some(DType::I8),
    i16 => Some(DType::I16),
    i32 => Some(DType::I32),
    i64 => Some(DType::I64),
    u8 => Some(DType::U8),
    u16 => None,
    u32 => None,
    u64 => None,
}

pub(super) fn bytes_of<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: `Element` types have no padding, so all `size_of_val(s)` bytes
    // are initialized; u8 has alignment 1 and the lifetime is kept.
    unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

pub(super) fn bytes_of_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    // SAFETY: as in `bytes_of`; in addition every bit pattern is a valid
    // `T`, so any bytes written through the returned slice leave valid values.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(s)) }
}

/// A vector of `len` all-zero-bits values.
pub(super) fn zeroed_vec<T: Element>(len: usize) -> Vec<T> {
    let mut v = Vec::<T>::with_capacity(len);
    // SAFETY: the capacity is at least `len`; all-zero bits are a valid `T`
    // (every bit pattern is), so the first `len` elements are initialized
    // before `set_len`.
    unsafe {
        std::ptr::write_bytes(v.as_mut_ptr(), 0, len);
        v.set_len(len);
    }
    v
}
