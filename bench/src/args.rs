//! A small command-line reader: `-c 100`, `--clients 100` and `--clients=100` all work, and
//! anything left over is an error.

use std::str::FromStr;

pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn new(args: Vec<String>) -> Args {
        Args { rest: args }
    }

    /// Whether a bare flag is present (removes it).
    pub fn flag(&mut self, names: &[&str]) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| !names.contains(&a.as_str()));
        self.rest.len() != before
    }

    /// The value of an option, if given (the last one wins).
    pub fn value(&mut self, names: &[&str]) -> Result<Option<String>, String> {
        let mut found = None;
        let mut i = 0;
        while i < self.rest.len() {
            let arg = &self.rest[i];
            if names.contains(&arg.as_str()) {
                if i + 1 >= self.rest.len() {
                    return Err(format!("{arg} needs a value"));
                }
                found = Some(self.rest.remove(i + 1));
                self.rest.remove(i);
            } else if let Some((name, value)) =
                arg.split_once('=').filter(|(n, _)| names.contains(n))
            {
                let _ = name;
                found = Some(value.to_owned());
                self.rest.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    /// A parsed option, or `default`.
    pub fn get<T: FromStr>(&mut self, names: &[&str], default: T) -> Result<T, String> {
        match self.value(names)? {
            Some(v) => v
                .parse()
                .map_err(|_| format!("{}: {v:?} is not a valid value", names[names.len() - 1])),
            None => Ok(default),
        }
    }

    /// A parsed option that may be absent.
    pub fn opt<T: FromStr>(&mut self, names: &[&str]) -> Result<Option<T>, String> {
        self.value(names)?
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("{}: {v:?} is not a valid value", names[names.len() - 1]))
            })
            .transpose()
    }

    /// A comma-separated list.
    pub fn list<T: FromStr>(&mut self, names: &[&str], default: &str) -> Result<Vec<T>, String> {
        let raw = self.value(names)?.unwrap_or_else(|| default.to_owned());
        raw.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| format!("{}: {s:?} is not a valid value", names[names.len() - 1]))
            })
            .collect()
    }

    /// Fails on anything not consumed.
    pub fn finish(self) -> Result<(), String> {
        match self.rest.first() {
            Some(arg) => Err(format!("unknown argument {arg:?} (try --help)")),
            None => Ok(()),
        }
    }
}
