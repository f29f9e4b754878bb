//! The README's Rust examples live in `examples/readme_*.rs`, so that they
//! compile (and CI runs them, as every example, on the host backend). This
//! checks that the README shows them as they are there, whitespace aside
//! (the README aligns its comments; rustfmt does not).

const README: &str = include_str!("../README.md");

/// The example files, in the order of their blocks in the README.
const EXAMPLES: [(&str, &str); 2] = [
    (
        "examples/readme_use.rs",
        include_str!("../examples/readme_use.rs"),
    ),
    (
        "examples/readme_planned.rs",
        include_str!("../examples/readme_planned.rs"),
    ),
];

/// The README's fenced `rust` blocks, in order.
fn rust_blocks(text: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```rust\n") {
        let body = &rest[start + "```rust\n".len()..];
        let end = body
            .find("```")
            .expect("an unclosed rust block in README.md");
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    blocks
}

/// The code without its `//!` header lines and without whitespace.
fn code(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//!"))
        .flat_map(str::chars)
        .filter(|c| !c.is_whitespace())
        .collect()
}

#[test]
fn the_readme_shows_its_examples_as_they_compile() {
    let blocks = rust_blocks(README);
    assert_eq!(
        blocks.len(),
        EXAMPLES.len(),
        "README.md has {} rust blocks; tests/readme.rs knows {} example files",
        blocks.len(),
        EXAMPLES.len()
    );
    for (block, (path, file)) in blocks.iter().zip(EXAMPLES) {
        assert_eq!(
            code(block),
            code(file),
            "README.md's block differs from {path}:\n{block}"
        );
    }
}

#[test]
fn a_changed_block_is_caught() {
    let block = rust_blocks(README)[0].replacen("graph_mode", "graph_mod", 1);
    assert_ne!(code(&block), code(EXAMPLES[0].1));
}
