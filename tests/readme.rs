//! Keeps the README honest: every code block marked `<!-- snippet: path -->` must still stand,
//! line for line (indentation aside), in that source file.

use std::fs;
use std::path::Path;

/// Non-empty lines, trimmed.
fn lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn readme_snippets_match_the_source() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let mut checked = 0;
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("<!-- snippet: ") {
        rest = &rest[at + "<!-- snippet: ".len()..];
        let (path, after) = rest.split_once(" -->").expect("snippet marker closes");
        let block = after
            .trim_start()
            .strip_prefix("```")
            .expect("a code block follows the marker");
        let block = &block[block.find('\n').unwrap() + 1..];
        let block = &block[..block.find("```").expect("the code block closes")];
        let source = fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
        let (want, have) = (lines(block), lines(&source));
        assert!(!want.is_empty(), "empty snippet for {path}");
        assert!(
            have.windows(want.len()).any(|w| w == want.as_slice()),
            "README quotes {path}, but these lines no longer stand there together:\n{}",
            want.join("\n")
        );
        checked += 1;
    }
    assert!(
        checked >= 7,
        "only {checked} snippets found: the markers were lost"
    );
}

#[test]
fn readme_starts_with_the_two_commands() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let first_block = readme
        .split("```sh")
        .nth(1)
        .expect("a shell block near the top");
    assert!(first_block.contains("cargo run --release"));
    assert!(first_block.contains("cargo test"));
}
