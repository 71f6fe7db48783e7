//! The room code and the operator token (who may enter): secrets from the command line, kept
//! out of every log and compared in constant time.
//!
//! A comparison that stops at the first wrong byte answers a wrong guess a little sooner the
//! earlier it goes wrong, and over enough guesses that difference can be measured, one byte
//! at a time. [`Secret::matches`] always looks at every one of [`MAX_SECRET_BYTES`] positions,
//! whatever the guess, and decides only at the end. It takes a dozen lines, so no crate.

use std::fmt;
use std::hint::black_box;

/// The longest code or token, in bytes (each is printable ASCII, so also in characters).
pub const MAX_SECRET_BYTES: usize = 128;

/// A room code or an operator token. Its `Debug` hides it, so that no log line, however it
/// prints a configuration, can show it.
#[derive(Clone)]
pub struct Secret {
    /// The secret, then zeros to [`MAX_SECRET_BYTES`]: every comparison reads all of it.
    bytes: [u8; MAX_SECRET_BYTES],
    len: usize,
}

impl Secret {
    /// A secret from the command line or the environment: 1 to 128 printable ASCII characters
    /// without spaces.
    ///
    /// # Errors
    /// What the rule is, never the value given (it may be a secret with a typo in it).
    pub fn parse(value: &str) -> Result<Secret, String> {
        let printable = |b: &u8| (0x21..=0x7e).contains(b);
        if value.is_empty()
            || value.len() > MAX_SECRET_BYTES
            || !value.bytes().all(|b| printable(&b))
        {
            return Err(format!(
                "must be 1 to {MAX_SECRET_BYTES} printable ASCII characters without spaces"
            ));
        }
        let mut bytes = [0; MAX_SECRET_BYTES];
        bytes[..value.len()].copy_from_slice(value.as_bytes());
        Ok(Secret {
            bytes,
            len: value.len(),
        })
    }

    /// Whether `given` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, given: &str) -> bool {
        self.compare(given.as_bytes(), |_| {})
    }

    /// The comparison, telling `look` each position it reads (so a test can show that it
    /// reads them all, whatever the guess). No branch depends on the secret: every position
    /// up to [`MAX_SECRET_BYTES`] is read, differences are gathered with `|`, and the one
    /// decision is made at the end. The guess's own length only decides which of its bytes
    /// exist, which tells the guesser nothing they did not know.
    fn compare(&self, given: &[u8], mut look: impl FnMut(usize)) -> bool {
        // Lengths that differ leave a bit set here, so a prefix of the secret never matches.
        let mut difference = (given.len() ^ self.len) as u64;
        for (at, secret_byte) in self.bytes.iter().enumerate() {
            look(at);
            let given_byte = given.get(at).copied().unwrap_or(0);
            difference |= u64::from(black_box(given_byte ^ secret_byte));
        }
        black_box(difference) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(hidden)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        self.compare(&other.bytes[..other.len], |_| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_access_a_secret_matches_itself_only() {
        let code = Secret::parse("correct-horse").unwrap();
        assert!(code.matches("correct-horse"));
        for wrong in [
            "",
            "correct-hors",
            "correct-horse!",
            "Correct-horse",
            "correct-horsf",
            "correct-horse\0",
            &"x".repeat(5000),
        ] {
            assert!(!code.matches(wrong), "{wrong:?}");
        }
        let longest = "~".repeat(MAX_SECRET_BYTES);
        assert!(Secret::parse(&longest).unwrap().matches(&longest));
        assert!(!Secret::parse(&longest).unwrap().matches(&"~".repeat(129)));
    }

    #[test]
    fn operators_access_secrets_follow_their_rule_and_errors_never_show_them() {
        for bad in [
            "",
            "two words",
            "tab\there",
            "caf\u{e9}",
            &"a".repeat(129),
            "nl\n",
        ] {
            let err = Secret::parse(bad).unwrap_err();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
        assert!(Secret::parse("!#$%&'()*+,-./09:;<=>?@AZ[\\]^_`az{|}~").is_ok());
    }

    #[test]
    fn operators_access_a_secret_never_shows_in_debug_output() {
        let secret = Secret::parse("hunter2").unwrap();
        let shown = format!("{secret:?} {:?}", Some(secret.clone()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    /// The comparison does not return early: whether a guess goes wrong at its first byte,
    /// its last, in its length, or not at all, every position is read, in the same order.
    /// (A structural check, not a stopwatch: timing asserts are noise on a shared machine.)
    #[test]
    fn operators_access_the_comparison_reads_every_position_whatever_the_guess() {
        let secret = Secret::parse("correct-horse-battery").unwrap();
        let guesses = [
            "xorrect-horse-battery", // wrong at the first byte
            "correct-horse-batterx", // wrong at the last
            "correct",               // a prefix
            "",                      // nothing
            "correct-horse-battery", // right
            &"x".repeat(4096),       // longer than any secret
        ];
        let every: Vec<usize> = (0..MAX_SECRET_BYTES).collect();
        for guess in guesses {
            let mut read = Vec::new();
            secret.compare(guess.as_bytes(), |at| read.push(at));
            assert_eq!(read, every, "{guess:?}");
        }
    }
}
