//! Keeps the docs honest: `README.md`, `docs/*.md` and the project's other Markdown files.
//!
//! - Every code block marked `<!-- snippet: path -->` still stands, line for line (indentation
//!   aside), in that source file, and is whole: its brackets balance, and it is one or more
//!   whole items or blocks (`fn`, `impl`, `struct`, `enum`, `const`, `match`, `if`, `loop`…),
//!   each to its end in the source: never a signature, nor lines from inside a function. Every
//!   `rust` block is such a snippet.
//! - Every relative link points at a file that exists, and at a heading that exists in it.
//! - The README starts with its two commands, its contents line reaches every section and
//!   every file of `docs/`, each step gives its `diff` command, and the test filter it
//!   suggests shows the `SKIPPED` lines of tests that could not run.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Every Markdown file of the project: the README, `docs/`, and the others (build output,
/// installed packages and hidden directories aside).
fn markdown_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                walk(&path, found);
            } else if name.ends_with(".md") {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(root(), &mut found);
    found.sort();
    assert!(
        found.iter().any(|p| p.ends_with("docs/reference.md")),
        "the walk found no docs: {found:?}"
    );
    found
}

/// The `docs/*.md` files.
fn docs() -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("a docs/ directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    docs
}

// ---------------------------------------------------------------------------------------------
// Snippets

/// A quoted code block: the file it quotes and its text.
struct Snippet {
    doc: PathBuf,
    path: String,
    code: String,
}

/// Every `<!-- snippet: path -->` block of `doc`.
fn snippets_of(doc: &Path) -> Vec<Snippet> {
    let text = read(doc);
    let mut found = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("<!-- snippet: ") {
        rest = &rest[at + "<!-- snippet: ".len()..];
        let (path, after) = rest.split_once(" -->").expect("snippet marker closes");
        let block = after
            .trim_start()
            .strip_prefix("```")
            .unwrap_or_else(|| panic!("{}: a code block follows the marker", doc.display()));
        let block = &block[block.find('\n').unwrap() + 1..];
        let code = &block[..block.find("```").expect("the code block closes")];
        found.push(Snippet {
            doc: doc.to_owned(),
            path: path.to_owned(),
            code: code.to_owned(),
        });
    }
    found
}

fn all_snippets() -> Vec<Snippet> {
    markdown_files()
        .iter()
        .flat_map(|doc| snippets_of(doc))
        .collect()
}

/// Non-empty lines, trimmed, each with its line number.
fn numbered_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n, l.trim()))
        .filter(|(_, l)| !l.is_empty())
        .collect()
}

/// Where the snippet's lines stand together in `source`: the line numbers of its first and
/// last line there, for each place they do.
fn places(snippet: &str, source: &str) -> Vec<(usize, usize)> {
    let want: Vec<&str> = numbered_lines(snippet)
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    let have = numbered_lines(source);
    if want.is_empty() || want.len() > have.len() {
        return Vec::new();
    }
    have.windows(want.len())
        .filter(|w| w.iter().map(|(_, l)| *l).eq(want.iter().copied()))
        .map(|w| (w[0].0, w[w.len() - 1].0))
        .collect()
}

/// Rust code with its comments, strings and character literals blanked out (each replaced by
/// spaces, newlines kept), so that only real brackets and semicolons are left to count.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, from: &[char]| {
        for c in from {
            out.push(if *c == '\n' { '\n' } else { ' ' });
        }
    };
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let end = if c == '/' && next == Some('/') {
            chars[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(chars.len(), |n| i + n)
        } else if c == '/' && next == Some('*') {
            (i + 2..chars.len().saturating_sub(1))
                .find(|&j| chars[j] == '*' && chars[j + 1] == '/')
                .map_or(chars.len(), |j| j + 2)
        } else if c == 'r' && matches!(next, Some('"' | '#')) && !ident_before(&chars, i) {
            // A raw string: r"…", r#"…"#, with as many #s on both ends.
            let hashes = chars[i + 1..].iter().take_while(|&&c| c == '#').count();
            if chars.get(i + 1 + hashes) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain((0..hashes).map(|_| '#'))
                .collect();
            let body = i + 2 + hashes;
            (body..chars.len())
                .find(|&j| chars[j..].starts_with(&close))
                .map_or(chars.len(), |j| j + close.len())
        } else if c == '"' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '"' {
                j += if chars[j] == '\\' { 2 } else { 1 };
            }
            j + 1
        } else if c == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{1F600}'
            (i + 3..chars.len())
                .find(|&j| chars[j] == '\'')
                .map_or(chars.len(), |j| j + 1)
        } else if c == '\'' && chars.get(i + 2) == Some(&'\'') {
            i + 3 // 'x'; otherwise a lifetime, which is plain code
        } else {
            out.push(c);
            i += 1;
            continue;
        };
        let end = end.min(chars.len());
        blank(&mut out, &chars[i..end]);
        i = end;
    }
    out
}

/// Whether the character before `at` continues an identifier (so an `r` there is not the start
/// of a raw string).
fn ident_before(chars: &[char], at: usize) -> bool {
    at > 0 && (chars[at - 1].is_alphanumeric() || chars[at - 1] == '_')
}

/// Checks that brackets balance in `code` (already [`code_only`]), never closing more than
/// were opened.
fn balanced(code: &str) -> Result<(), String> {
    let mut open = Vec::new();
    for (n, line) in code.lines().enumerate() {
        for c in line.chars() {
            match c {
                '(' | '[' | '{' => open.push(c),
                ')' | ']' | '}' => {
                    let want = match c {
                        ')' => '(',
                        ']' => '[',
                        _ => '{',
                    };
                    if open.pop() != Some(want) {
                        return Err(format!("line {}: `{c}` closes nothing it opened", n + 1));
                    }
                }
                _ => {}
            }
        }
    }
    match open.last() {
        None => Ok(()),
        Some(c) => Err(format!(
            "{} bracket(s) left open, the last `{c}`",
            open.len()
        )),
    }
}

/// What the first line of a snippet starts, if it starts an item or a block: `"item"` (ends at
/// its closing brace, or at a `;` for `struct A;` and the like) or `"statement"` (ends at
/// its `;`).
fn starts(first_line: &str) -> Option<&'static str> {
    let mut line = first_line.trim();
    for visibility in ["pub(crate) ", "pub(super) ", "pub "] {
        line = line.strip_prefix(visibility).unwrap_or(line);
    }
    for qualifier in ["async ", "unsafe ", "const fn", "extern "] {
        if qualifier == "const fn" {
            if line.starts_with("const fn") {
                line = &line["const ".len()..];
            }
        } else {
            line = line.strip_prefix(qualifier).unwrap_or(line);
        }
    }
    let word = |w: &str| line.starts_with(w) && line[w.len()..].starts_with([' ', '<', '{']);
    if ["fn", "impl", "struct", "enum", "trait", "mod", "union"]
        .iter()
        .any(|w| word(w))
        || ["match", "if", "loop", "while", "for"]
            .iter()
            .any(|w| word(w))
    {
        return Some("item");
    }
    let let_block = line.starts_with("let ")
        && [" = match ", " = if ", " = loop "]
            .iter()
            .any(|b| line.contains(b));
    if ["const", "static", "type"].iter().any(|w| word(w)) || let_block {
        return Some("statement");
    }
    None
}

/// In `code` (already [`code_only`]), where the item or statement that starts at byte `from`
/// ends: the byte just past its closing brace or semicolon.
fn item_end(code: &str, from: usize, kind: &str) -> Option<usize> {
    let bytes = code.as_bytes();
    let mut depth = 0usize;
    let mut i = from;
    while i < bytes.len() {
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' => depth = depth.checked_sub(1)?,
            b'}' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 && kind == "item" {
                    // `if … {} else {}` goes on past its first block.
                    let after = code[i + 1..].trim_start();
                    if !after.starts_with("else") {
                        return Some(i + 1);
                    }
                }
            }
            b';' if depth == 0 => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Checks that a snippet is whole: its brackets balance, and it is one or more whole items or
/// blocks of its source, each from its first line (after its doc comment and attributes) to
/// its end.
fn whole(snippet: &Snippet, source: &str) -> Result<(), String> {
    balanced(&code_only(&snippet.code))?;
    // Blanking keeps every line, so line numbers are the same in both; byte offsets are not.
    let source_code = code_only(source);
    let source_lines: Vec<&str> = source.lines().collect();
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(source_code.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let line_of = |byte: usize| line_starts.partition_point(|&s| s <= byte) - 1;
    // Doc comments and attributes above an item belong to it; the item starts after them.
    let is_code = |line: &str| {
        let line = line.trim();
        !line.is_empty() && !line.starts_with("//") && !line.starts_with("#[")
    };
    let mut why = String::from("its lines are nowhere in the source");
    'places: for (first_line, last_line) in places(&snippet.code, source) {
        let mut line = first_line;
        loop {
            // The next item: the first line of code from here.
            let Some(start) = (line..=last_line).find(|&n| is_code(source_lines[n])) else {
                why = format!(
                    "line {}: nothing but comments after the last item",
                    line + 1
                );
                continue 'places;
            };
            let text = source_lines[start].trim();
            let Some(kind) = starts(text) else {
                why = format!(
                    "`{text}` starts neither an item nor a block: quote the whole function it \
                     is part of"
                );
                continue 'places;
            };
            let Some(end) = item_end(&source_code, line_starts[start], kind) else {
                why = format!("`{text}` never ends in the source");
                continue 'places;
            };
            let end_line = line_of(end - 1);
            if end_line > last_line {
                why = format!(
                    "it starts `{text}` but stops before its end (line {} of the source)",
                    end_line + 1
                );
                continue 'places;
            }
            if end_line == last_line {
                return Ok(());
            }
            line = end_line + 1;
        }
    }
    Err(why)
}

#[test]
fn snippets_match_the_source() {
    let snippets = all_snippets();
    for snippet in &snippets {
        let source = read(&root().join(&snippet.path));
        assert!(
            !places(&snippet.code, &source).is_empty(),
            "{} quotes {}, but these lines no longer stand there together:\n{}",
            snippet.doc.display(),
            snippet.path,
            snippet.code
        );
    }
    let in_readme = snippets
        .iter()
        .filter(|s| s.doc.ends_with("README.md"))
        .count();
    assert!(
        snippets.len() >= 15 && in_readme >= 7,
        "only {} snippets found ({in_readme} in the README): the markers were lost",
        snippets.len()
    );
}

#[test]
fn snippets_are_whole_items_not_fragments() {
    let mut wrong = Vec::new();
    for snippet in all_snippets() {
        let source = read(&root().join(&snippet.path));
        if places(&snippet.code, &source).is_empty() {
            continue; // snippets_match_the_source says so
        }
        if let Err(why) = whole(&snippet, &source) {
            let first = snippet
                .code
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            wrong.push(format!(
                "{} quoting {} (`{}`): {why}",
                snippet.doc.display(),
                snippet.path,
                first.trim()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "snippets that are not whole:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_rust_block_is_a_checked_snippet() {
    for doc in markdown_files() {
        let text = read(&doc);
        let mut previous = "";
        for line in text.lines() {
            if line.trim() == "```rust" {
                assert!(
                    previous.trim().starts_with("<!-- snippet: "),
                    "{}: a rust block without a `<!-- snippet: path -->` marker, which no test \
                     checks against the source",
                    doc.display()
                );
            }
            if !line.trim().is_empty() {
                previous = line;
            }
        }
    }
}

/// The wholeness check itself: a signature, a fragment and an unbalanced block are caught,
/// and whole items pass.
#[test]
fn the_wholeness_check_catches_signatures_and_fragments() {
    let source = "\
impl Hub {
    /// Says hi.
    pub(super) fn hello(&mut self, name: &str) -> String {
        let greeting = if name.is_empty() {
            \"who? }\".to_owned()
        } else {
            format!(\"hi {name} {{\")
        };
        let c = '}';
        greeting
    }
}
";
    let snippet = |code: &str| Snippet {
        doc: PathBuf::from("test"),
        path: "test".into(),
        code: code.into(),
    };
    let signature = snippet("    pub(super) fn hello(&mut self, name: &str) -> String {\n");
    assert!(whole(&signature, source).is_err(), "a signature alone");
    let fragment = snippet(
        "        let greeting = if name.is_empty() {\n            \"who? }\".to_owned()\n        } else {\n",
    );
    assert!(whole(&fragment, source).is_err(), "half an if");
    let cut = snippet(
        "    pub(super) fn hello(&mut self, name: &str) -> String {\n        let greeting = if name.is_empty() {\n            \"who? }\".to_owned()\n        } else {\n            format!(\"hi {name} {{\")\n        };\n",
    );
    assert!(whole(&cut, source).is_err(), "a function cut short");
    let function = snippet(
        &source
            .lines()
            .skip(2)
            .take(9)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(whole(&function, source), Ok(()), "the whole function");
    let with_doc = snippet(
        &source
            .lines()
            .skip(1)
            .take(10)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(
        whole(&with_doc, source),
        Ok(()),
        "the function with its doc"
    );
    let statement = snippet(
        &source
            .lines()
            .skip(3)
            .take(5)
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(whole(&statement, source), Ok(()), "the whole let … = if");
    let line = snippet("        let c = '}';\n");
    assert!(
        whole(&line, source).is_err(),
        "a line from inside a function"
    );
    let impl_block = snippet(source);
    assert_eq!(
        whole(&impl_block, source),
        Ok(()),
        "the impl, with a brace in a char literal"
    );
}

// ---------------------------------------------------------------------------------------------
// Links

/// Markdown text with fenced code blocks and inline code blanked out.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            out.push('\n');
            continue;
        }
        if fenced {
            out.push('\n');
            continue;
        }
        let mut in_code = false;
        for c in line.chars() {
            if c == '`' {
                in_code = !in_code;
                out.push(' ');
            } else {
                out.push(if in_code { ' ' } else { c });
            }
        }
        out.push('\n');
    }
    out
}

/// Every link target in `text`: `[text](target)` and `![alt](target)`.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        rest = &rest[at + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    targets
}

/// The anchors GitHub makes for a Markdown file's headings: lowercased, punctuation dropped
/// (hyphens and underscores kept), spaces as hyphens, `-1`, `-2`… for repeats.
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while seen.contains(&anchor) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
        seen.insert(anchor);
    }
    seen
}

#[test]
fn the_anchor_rule_is_githubs() {
    let made = anchors(
        "# A\n## Frames: what crosses the wire after the `101`\n## 2. The HTTP head\n## Step 1: echo\n## Step 1: echo\n```\n# not a heading\n```\n",
    );
    for anchor in [
        "a",
        "frames-what-crosses-the-wire-after-the-101",
        "2-the-http-head",
        "step-1-echo",
        "step-1-echo-1",
    ] {
        assert!(made.contains(anchor), "{anchor} in {made:?}");
    }
    assert!(
        !made.contains("not-a-heading"),
        "headings in code blocks are not headings"
    );
}

#[test]
fn relative_links_point_at_files_and_headings_that_exist() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in markdown_files() {
        let text = read(&doc);
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file = if path.is_empty() {
                doc.clone()
            } else {
                doc.parent().unwrap().join(path)
            };
            if !file.exists() {
                broken.push(format!("{}: {target}: no such file", doc.display()));
                continue;
            }
            if anchor.is_empty() {
                continue;
            }
            if file.extension().is_none_or(|e| e != "md") {
                broken.push(format!(
                    "{}: {target}: an anchor into a file that is not Markdown",
                    doc.display()
                ));
            } else if !anchors(&read(&file)).contains(anchor) {
                broken.push(format!("{}: {target}: no such heading", doc.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked >= 50,
        "only {checked} links checked: the parser lost them"
    );
}

// ---------------------------------------------------------------------------------------------
// The README as a tutorial

fn readme() -> String {
    read(&root().join("README.md"))
}

#[test]
fn readme_starts_with_the_two_commands() {
    let readme = readme();
    let first_block = readme
        .split("```sh")
        .nth(1)
        .expect("a shell block near the top");
    let first_block = &first_block[..first_block.find("```").unwrap()];
    assert!(first_block.contains("cargo run --release"));
    assert!(first_block.contains("cargo test"));
}

#[test]
fn readme_contents_line_reaches_every_section_and_every_doc() {
    let readme = readme();
    let contents = readme
        .split("\nContents: ")
        .nth(1)
        .expect("a line starting `Contents: `");
    let contents = &contents[..contents.find("\n\n").unwrap_or(contents.len())];
    let targets = link_targets(contents);
    let ours = anchors(&readme);
    for heading in readme.lines().filter(|l| l.starts_with("## ")) {
        let anchor = anchors(heading).into_iter().next().unwrap();
        assert!(ours.contains(&anchor));
        assert!(
            targets.contains(&format!("#{anchor}")),
            "the contents line does not link `{heading}`"
        );
    }
    for doc in docs() {
        let name = format!("docs/{}", doc.file_name().unwrap().to_string_lossy());
        assert!(
            targets
                .iter()
                .any(|t| t.split('#').next() == Some(name.as_str())),
            "the contents line does not link {name}"
        );
    }
}

/// The step number of `examples/stepN_name.rs`.
fn step_of(path: &str) -> Option<u32> {
    let name = path.strip_prefix("examples/step")?;
    name[..name.find('_')?].parse().ok()
}

#[test]
fn readme_gives_each_step_its_diff_command() {
    let readme = readme();
    let mut steps: Vec<u32> = fs::read_dir(root().join("examples"))
        .unwrap()
        .flatten()
        .filter_map(|e| step_of(&format!("examples/{}", e.file_name().to_string_lossy())))
        .collect();
    steps.sort_unstable();
    let mut given = Vec::new();
    for line in readme.lines() {
        let Some(at) = line.find("diff examples/") else {
            continue;
        };
        let words: Vec<&str> = line[at..].split_whitespace().collect();
        let (before, after) = (words[1], words[2].trim_end_matches('`'));
        for path in [before, after] {
            assert!(
                root().join(path).is_file(),
                "README: `{}`: no {path}",
                line.trim()
            );
        }
        let (a, b) = (step_of(before).unwrap(), step_of(after).unwrap());
        assert_eq!(
            a + 1,
            b,
            "README: `{}` compares steps {a} and {b}",
            line.trim()
        );
        given.push(b);
    }
    for step in steps.into_iter().filter(|&s| s > 1) {
        assert!(
            given.contains(&step),
            "the README gives no `diff` command for step {step}"
        );
    }
}

#[test]
fn readme_test_filter_keeps_skipped_lines() {
    let readme = readme();
    let line = readme
        .lines()
        .find(|l| l.contains("cargo test") && l.contains("grep -E '"))
        .expect("the README suggests a test filter");
    let pattern = line
        .split("grep -E '")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    // What `cargo test` prints, and what the tests that skip print (tests/common).
    let output = "\
running 3 tests
test step2_example_broadcasts_to_everyone ... ok
test hub::tests::step2_a_slow_reader_is_dropped_and_the_channel_told ... FAILED

SKIPPED: the page against the examples: /usr/bin/chromium not found
thread 'step2_x' panicked at tests/examples.rs:10:5:
test result: FAILED. 1 passed; 1 failed
";
    let mut grep = Command::new("grep")
        .args(["-E", pattern])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("grep runs");
    use std::io::Write;
    grep.stdin
        .take()
        .unwrap()
        .write_all(output.as_bytes())
        .unwrap();
    let kept = String::from_utf8(grep.wait_with_output().unwrap().stdout).unwrap();
    for wanted in ["... ok", "... FAILED", "SKIPPED:", "panicked at"] {
        assert!(
            kept.contains(wanted),
            "`grep -E '{pattern}'` drops `{wanted}`:\n{kept}"
        );
    }
    assert!(
        !kept.contains("running 3 tests"),
        "the filter keeps everything:\n{kept}"
    );
}

// ---------------------------------------------------------------------------------------------
// Words

/// Every text file of the project (code, tests, docs, the page, the examples), build output,
/// installed packages, hidden directories and binary files aside.
fn project_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "target" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                walk(&path, found);
            } else if fs::read_to_string(&path).is_ok() {
                found.push(path);
            }
        }
    }
    let mut found = Vec::new();
    walk(root(), &mut found);
    found
}

#[test]
fn the_project_speaks_of_itself_not_of_its_history() {
    // The project's reference is docs/reference.md; the file it was written from, and the
    // issues that shaped the code, are no part of what a reader gets.
    let everywhere = ["PROTOCOL.md", "the contract", "mpsc channel"];
    let in_docs = [
        "before the budgets",
        "used to",
        "issue 1",
        "issue 2",
        "issue #",
    ];
    let mut found = Vec::new();
    for path in project_files() {
        if path.ends_with("tests/readme.rs") {
            continue; // the words themselves
        }
        let text = read(&path).to_lowercase();
        let is_doc = path.extension().is_some_and(|e| e == "md");
        let needles = everywhere.iter().chain(in_docs.iter().filter(|_| is_doc));
        for needle in needles {
            if contains_words(&text, &needle.to_lowercase()) {
                found.push(format!("{}: \"{needle}\"", path.display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "words the project should not use:\n{}",
        found.join("\n")
    );
}

/// Whether `words` stand in `text` as words (so "refused to" does not count as "used to").
fn contains_words(text: &str, words: &str) -> bool {
    text.match_indices(words).any(|(at, _)| {
        !text[..at]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
    })
}
