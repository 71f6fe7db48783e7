//! Keeps the layout from rotting: it reads `src/**/*.rs` as text and checks that
//! - dependencies run one way: no circle among the library's top-level modules (`hub`,
//!   `connection`, `cluster`, …), nor among the files of any one module's folders, and the hub
//!   never names the Redis adapter (`cluster`);
//! - no product file holds more than [`MAX_LINES`] lines of code;
//! - the hub's tutorial steps name nothing of the several-servers side, and never ask whether
//!   there are other servers: they only call into `peers`.
//!
//! A dependency is any path in code to something of this crate (`use` lines and inline
//! `crate::`/`super::` paths alike, comments and test modules aside), resolved to the file
//! that defines what it names, a `use` followed to its source.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The most lines of code a product file may hold: its lines before its test module
/// (`#[cfg(test)] mod tests {`), blank lines and comment lines (`//`, `///`, `//!`) not counted.
/// Test files (`tests.rs`) are not product files.
const MAX_LINES: usize = 400;

/// The hub's tutorial steps, which must read as the single-server chat.
const STEPS: [&str; 7] = [
    "hub/mod.rs",
    "hub/user.rs",
    "hub/users.rs",
    "hub/channels.rs",
    "hub/messages.rs",
    "hub/presence.rs",
    "hub/delivery.rs",
];

/// Where the several-servers side lives: every type and constant these declare public (to
/// any degree) is one the steps may not name.
const SEVERAL_SERVERS: [&str; 2] = ["hub/peers/", "cluster/"];

/// One source file of the library.
struct File {
    /// Relative to `src/`, with `/` separators.
    path: String,
    /// Its module path: `hub/peers/port.rs` is `["hub", "peers", "port"]`, `hub/mod.rs` is
    /// `["hub"]`.
    module: Vec<String>,
    /// Its code: comments and its test module removed.
    code: String,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, as paths relative to `src/`.
fn rust_files(dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(src()).unwrap();
            out.push(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// The lines of a file before its test module (`#[cfg(test)]` then `mod … {`; a test module
/// in a file of its own, `#[cfg(test)] mod tests;`, is not in the file).
fn before_tests(text: &str) -> impl Iterator<Item = &str> {
    let lines: Vec<&str> = text.lines().collect();
    let end = (0..lines.len())
        .find(|&i| {
            let next = lines[i + 1..]
                .iter()
                .map(|l| l.trim())
                .find(|l| !l.is_empty());
            lines[i].trim() == "#[cfg(test)]"
                && next.is_some_and(|l| l.starts_with("mod ") && l.ends_with('{'))
        })
        .unwrap_or(lines.len());
    lines.into_iter().take(end)
}

/// Code without comments (a `//` inside a string literal cuts the rest of its line too, which
/// can only hide a path, never invent one).
fn code_of(text: &str) -> String {
    let mut code = String::new();
    for line in before_tests(text) {
        let line = line.find("//").map_or(line, |at| &line[..at]);
        code.push_str(line);
        code.push('\n');
    }
    code
}

/// The library's files (the binaries' own `src/main.rs` and `src/bin/` are crates of their
/// own), without test files.
fn library() -> Vec<File> {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    paths
        .into_iter()
        .filter(|p| p != "main.rs" && !p.starts_with("bin/") && !p.ends_with("tests.rs"))
        .map(|path| {
            let text = fs::read_to_string(src().join(&path)).unwrap();
            let stem = path.trim_end_matches(".rs");
            let mut module: Vec<String> = stem.split('/').map(str::to_owned).collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            File {
                path,
                module,
                code: code_of(&text),
            }
        })
        .collect()
}

/// Every path a file's code names: in `use` lines, each tree expanded (`use super::{a, b::c}`
/// names `super::a` and `super::b::c`); elsewhere, those through `crate::`, `super::` or
/// `self::`.
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    // `use` statements first, braces and all.
    let mut outside_uses = String::new();
    while let Some(at) = find_use(rest) {
        outside_uses.push_str(&rest[..at]);
        let statement = &rest[at..];
        let end = statement.find(';').unwrap_or(statement.len());
        expand(&use_tree(&statement[..end]), &mut Vec::new(), &mut paths);
        rest = &statement[end..];
    }
    outside_uses.push_str(rest);
    // Then paths written inline, in any expression or type.
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = outside_uses[from..].find(start) {
            let at = from + at;
            from = at + start.len();
            let before = outside_uses[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // part of a longer path or name
            }
            let path: String = outside_uses[at..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<String> = path
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            paths.push(segments);
        }
    }
    paths.retain(|p| !p.is_empty());
    paths
}

/// Where the next `use` statement starts (`use`, `pub use`, `pub(…) use`).
fn find_use(code: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = code[from..].find("use ") {
        let at = from + at;
        from = at + 4;
        let before = code[..at].trim_end_matches(' ');
        let starts_item = before.is_empty()
            || before.ends_with(['\n', ';', '{', '}', ']', ')'])
            || before.ends_with("pub");
        let glued = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        if starts_item && !glued {
            return Some(at);
        }
    }
    None
}

/// The tree of a `use` statement (`use …` up to its `;`), compact: whitespace removed and a
/// renaming (`a as b`) written `a@b`.
fn use_tree(statement: &str) -> String {
    let tree = &statement[statement.find("use ").map_or(0, |at| at + "use ".len())..];
    let tree = tree.replace(" as ", "@");
    tree.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Expands one compact `use` tree under `prefix` into `out`.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    // Split at the top-level `{`, if any.
    let Some(open) = tree.find('{') else {
        let mut path = prefix.clone();
        let tree = tree.split('@').next().unwrap_or(tree);
        path.extend(
            tree.split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
        if path.last().is_some_and(|s| s == "self") {
            path.pop();
        }
        out.push(path);
        return;
    };
    let head: Vec<String> = tree[..open]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let depth = prefix.len();
    prefix.extend(head);
    let (mut level, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => level += 1,
            '}' => level -= 1,
            ',' if level == 0 => {
                expand(&inner[start..i], prefix, out);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        expand(&inner[start..], prefix, out);
    }
    prefix.truncate(depth);
}

/// The library's files by module path.
struct Index<'a> {
    by_module: BTreeMap<Vec<String>, &'a File>,
}

impl<'a> Index<'a> {
    fn new(files: &'a [File]) -> Index<'a> {
        let by_module = files.iter().map(|f| (f.module.clone(), f)).collect();
        Index { by_module }
    }

    /// The file that defines what `path` (written in `from`) names.
    fn resolve(&self, from: &File, path: &[String]) -> Option<&'a File> {
        let (mut module, mut rest) = match path.first()?.as_str() {
            "crate" => (Vec::new(), &path[1..]),
            "self" | "super" => (from.module.clone(), &path[1..]),
            // A child module (`use users::User` in `hub/mod.rs`), or another crate.
            child => {
                let mut module = from.module.clone();
                module.push(child.to_owned());
                if !self.by_module.contains_key(&module) {
                    return None;
                }
                (module, &path[1..])
            }
        };
        if path[0] == "super" {
            module.pop();
            while rest.first().is_some_and(|s| s == "super") {
                module.pop();
                rest = &rest[1..];
            }
        }
        self.find(module, rest, 0)
    }

    /// Follows `rest` from `module`, into submodules and through `pub use`s.
    fn find(&self, mut module: Vec<String>, rest: &[String], depth: usize) -> Option<&'a File> {
        for (i, name) in rest.iter().enumerate() {
            let mut deeper = module.clone();
            deeper.push(name.clone());
            if self.by_module.contains_key(&deeper) {
                module = deeper;
                continue;
            }
            // Not a module: an item of this module's file, or one it re-exports.
            let file = *self.by_module.get(&module)?;
            if depth < 8
                && let Some(source) = reexport(&file.code, name)
            {
                let mut path = source;
                path.extend(rest[i + 1..].iter().cloned());
                let start = match path.first().map(String::as_str) {
                    Some("crate") => {
                        path.remove(0);
                        Vec::new()
                    }
                    Some("super") => {
                        path.remove(0);
                        let mut m = module.clone();
                        m.pop();
                        m
                    }
                    Some("self") => {
                        path.remove(0);
                        module.clone()
                    }
                    _ => module.clone(),
                };
                return self.find(start, &path, depth + 1);
            }
            return Some(file);
        }
        self.by_module.get(&module).copied()
    }
}

/// Where `code` brings `name` in from (`use a::b::{name, …}` gives `a::b::name`), if it does
/// not define it itself: a child module may name what its parent imports, and anyone what it
/// re-exports.
fn reexport(code: &str, name: &str) -> Option<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = find_use(rest) {
        let statement = &rest[at..];
        let end = statement.find(';').unwrap_or(statement.len());
        expand(&use_tree(&statement[..end]), &mut Vec::new(), &mut paths);
        rest = &statement[end..];
    }
    paths
        .into_iter()
        .find(|p| p.last().is_some_and(|s| s == name))
}

/// Whether `a` is a module `b` is inside (its front file: `mod.rs`, or `x.rs` of `x/`).
fn encloses(a: &File, b: &File) -> bool {
    a.module.len() < b.module.len() && b.module.starts_with(&a.module)
}

/// A circle in `edges`, if there is one, as the nodes around it.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in edges.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|n| n == next).unwrap();
                    let mut circle = stack[at..].to_vec();
                    circle.push(next.clone());
                    return Some(circle);
                }
                Some(_) => {}
                None => {
                    if let Some(circle) = visit(next, edges, state, stack) {
                        return Some(circle);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if !state.contains_key(node.as_str())
            && let Some(circle) = visit(node, edges, &mut state, &mut Vec::new())
        {
            return Some(circle);
        }
    }
    None
}

/// Every dependency between the library's files: (from, to).
fn dependencies<'a>(files: &'a [File], index: &Index<'a>) -> Vec<(&'a File, &'a File)> {
    let mut out = Vec::new();
    for file in files {
        for path in paths_named(&file.code) {
            if let Some(to) = index.resolve(file, &path)
                && to.path != file.path
            {
                out.push((file, to));
            }
        }
    }
    out
}

#[test]
fn layout_dependencies_run_one_way() {
    let files = library();
    let index = Index::new(&files);
    let deps = dependencies(&files, &index);
    assert!(deps.len() > 100, "only {} dependencies read", deps.len());

    // Between top-level modules.
    let top = |f: &File| f.module.first().cloned();
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to) in &deps {
        if let (Some(a), Some(b)) = (top(from), top(to))
            && a != b
        {
            modules.entry(a).or_default().insert(b);
        }
    }
    if let Some(circle) = find_circle(&modules) {
        panic!("the modules import each other: {}", circle.join(" -> "));
    }
    let hub_names = modules.get("hub").cloned().unwrap_or_default();
    assert!(
        !hub_names.contains("cluster"),
        "the hub names the Redis adapter (cluster); it is the adapter that names the hub"
    );

    // Between the files of one top-level module (a file that encloses another, its `mod.rs`
    // or `x.rs` of `x/`, is where that one is declared, and may be named by it).
    let mut files_of: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (from, to) in &deps {
        if top(from) == top(to) && !encloses(to, from) {
            let module = top(from).unwrap_or_default();
            let edges = files_of.entry(module).or_default();
            edges
                .entry(from.path.clone())
                .or_default()
                .insert(to.path.clone());
        }
    }
    assert!(
        files_of
            .get("connection")
            .is_some_and(|e| e.contains_key("connection/outbox.rs")),
        "the connection's files were not read"
    );
    for (module, edges) in &files_of {
        if let Some(circle) = find_circle(edges) {
            panic!(
                "files of {module}/ import each other: {}",
                circle.join(" -> ")
            );
        }
    }
}

#[test]
fn layout_no_product_file_is_over_400_lines_of_code() {
    let mut paths = Vec::new();
    rust_files(&src(), &mut paths);
    let mut too_long = Vec::new();
    for path in paths.iter().filter(|p| !p.ends_with("tests.rs")) {
        let text = fs::read_to_string(src().join(path)).unwrap();
        let lines = before_tests(&text)
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("//"))
            .count();
        if lines > MAX_LINES {
            too_long.push(format!("{path}: {lines}"));
        }
    }
    assert!(paths.len() > 40, "only {} files read", paths.len());
    assert!(
        too_long.is_empty(),
        "over {MAX_LINES} lines of code: {too_long:?}"
    );
}

/// Whether `code` uses `name` as a whole word.
fn names(code: &str, name: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(word) && !after.is_some_and(word)
    })
}

#[test]
fn layout_the_hubs_steps_know_nothing_of_other_servers() {
    let files = library();
    let mut forbidden = BTreeSet::new();
    for file in files
        .iter()
        .filter(|f| SEVERAL_SERVERS.iter().any(|dir| f.path.starts_with(dir)))
    {
        for line in file.code.lines() {
            let line = line.trim_start();
            let Some(rest) = line.strip_prefix("pub") else {
                continue;
            };
            let rest = rest.trim_start();
            let rest = match rest.strip_prefix('(') {
                Some(scoped) => scoped.split_once(')').map_or("", |(_, r)| r).trim_start(),
                None => rest,
            };
            for kind in ["struct ", "enum ", "type ", "trait ", "const ", "static "] {
                if let Some(name) = rest.strip_prefix(kind) {
                    let name: String = name
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    forbidden.insert(name);
                }
            }
        }
    }
    for expected in [
        "ClusterEvent",
        "ClusterLink",
        "UserRecord",
        "Clustered",
        "Running",
    ] {
        assert!(forbidden.contains(expected), "{expected} was not found");
    }
    for step in STEPS {
        let file = files
            .iter()
            .find(|f| f.path == step)
            .unwrap_or_else(|| panic!("{step} is gone"));
        let lower = file.code.to_lowercase();
        for word in ["cluster", "redis"] {
            assert!(!lower.contains(word), "{step} speaks of {word} in its code");
        }
        let named: Vec<_> = forbidden.iter().filter(|n| names(&file.code, n)).collect();
        assert!(named.is_empty(), "{step} names {named:?}");
        for variant in ["Peers::Alone", "Peers::Clustered"] {
            assert!(
                !file.code.contains(variant),
                "{step} asks which kind of peers the hub has ({variant}): call into `peers`"
            );
        }
    }
}
