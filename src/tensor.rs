//! Device buffers and tensors whose memory comes from the allocator.
