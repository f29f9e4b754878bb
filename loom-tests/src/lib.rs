//! loom models of graphalloc live in `tests/`.
