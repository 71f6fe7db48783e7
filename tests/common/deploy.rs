//! The operator's files in `deploy/`, as the tests run them: read from the project, with
//! only the lines that must differ on a test machine rewritten (ports, certificates,
//! directories), each file's header saying which. A rewrite that finds no line to rewrite
//! fails the test: the file and the test must not drift apart unseen.

use std::path::Path;

/// The text of `deploy/{name}`.
pub fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// What a line becomes: the lines to put in its place, given the line (trimmed).
pub type Replace<'a> = Box<dyn Fn(&str) -> Vec<String> + 'a>;

/// One rewrite: every line that starts with `starts` (indentation aside) is replaced by
/// `with(line)`, each of its lines at the original indentation. An empty result drops the
/// line.
pub struct Rewrite<'a> {
    pub starts: &'a str,
    pub with: Replace<'a>,
}

impl<'a> Rewrite<'a> {
    /// Replaces each such line with what `with` makes of it.
    pub fn with(starts: &'a str, with: impl Fn(&str) -> String + 'a) -> Rewrite<'a> {
        Rewrite {
            starts,
            with: Box::new(move |line| vec![with(line)]),
        }
    }

    /// Replaces each such line with `line`.
    pub fn to(starts: &'a str, line: impl Into<String>) -> Rewrite<'a> {
        let line = line.into();
        Rewrite {
            starts,
            with: Box::new(move |_| vec![line.clone()]),
        }
    }

    /// Drops each such line.
    pub fn drop(starts: &'a str) -> Rewrite<'a> {
        Rewrite {
            starts,
            with: Box::new(|_| Vec::new()),
        }
    }

    /// Keeps each such line and adds `lines` after it.
    pub fn add_after(starts: &'a str, lines: Vec<String>) -> Rewrite<'a> {
        Rewrite {
            starts,
            with: Box::new(move |line| {
                let mut out = vec![line.to_owned()];
                out.extend(lines.iter().cloned());
                out
            }),
        }
    }
}

/// `deploy/{name}` with `rewrites` applied: the first that fits a line rewrites it.
///
/// # Panics
/// When a rewrite fits no line of the file.
pub fn rewritten(name: &str, rewrites: &[Rewrite]) -> String {
    let text = read(name);
    let mut used = vec![false; rewrites.len()];
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        match rewrites.iter().position(|r| trimmed.starts_with(r.starts)) {
            Some(at) => {
                used[at] = true;
                for new in (rewrites[at].with)(trimmed) {
                    out.push_str(indent);
                    out.push_str(&new);
                    out.push('\n');
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (rewrite, used) in rewrites.iter().zip(used) {
        assert!(
            used,
            "deploy/{name}: no line starts with {:?}; the test's rewrites and the file disagree",
            rewrite.starts
        );
    }
    out
}

/// The program and the flags of `deploy/cyberchat.service`'s `ExecStart=` line.
pub fn unit_exec_start() -> (String, Vec<String>) {
    let unit = read("cyberchat.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let mut words = line.split_whitespace().map(str::to_owned);
    let program = words.next().expect("ExecStart names a program");
    (program, words.collect())
}

/// The unit's flags for a server on this machine: each flag named in `replace` gets the value
/// given, or with `None` is left out (every time it appears, if it does). Every flag of the
/// unit takes a value.
///
/// # Panics
/// When a flag to give another value is not in the unit.
pub fn unit_flags(replace: &[(&str, Option<&str>)]) -> Vec<String> {
    let (_, flags) = unit_exec_start();
    assert!(
        flags.len() % 2 == 0,
        "ExecStart's flags come in pairs: {flags:?}"
    );
    for (flag, value) in replace {
        assert!(
            value.is_none() || flags.iter().step_by(2).any(|f| f == flag),
            "deploy/cyberchat.service: ExecStart has no {flag}"
        );
    }
    let mut out = Vec::new();
    for pair in flags.chunks(2) {
        match replace.iter().find(|(flag, _)| *flag == pair[0]) {
            Some((_, None)) => {}
            Some((flag, Some(value))) => out.extend([flag.to_string(), value.to_string()]),
            None => out.extend(pair.iter().cloned()),
        }
    }
    out
}

/// The environment `deploy/cyberchat.service` gives the server (`EnvironmentFile=`, installed
/// from `deploy/cyberchat.env.example`), each variable with the value `values` gives it: the
/// test's own secrets in place of the example's.
///
/// # Panics
/// When a variable in `values` is not set in the file (commented out, or misspelt), or the
/// file sets one that `values` does not name: the unit and the test must not drift apart.
pub fn unit_environment(values: &[(&str, &str)]) -> Vec<(String, String)> {
    let text = read("cyberchat.env.example");
    let set: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim()))
        .collect();
    for name in &set {
        assert!(
            values.iter().any(|(n, _)| n == name),
            "deploy/cyberchat.env.example sets {name}, which the test gives no value"
        );
    }
    values
        .iter()
        .map(|(name, value)| {
            assert!(
                set.contains(name),
                "deploy/cyberchat.env.example does not set {name}"
            );
            (name.to_string(), value.to_string())
        })
        .collect()
}
