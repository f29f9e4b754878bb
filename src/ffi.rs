//! The C ABI: graphalloc as a PyTorch pluggable allocator.
