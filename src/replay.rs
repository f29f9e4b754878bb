//! Trace replay: parse allocation traces and replay them through an allocator.
