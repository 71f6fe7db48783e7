//! Guessing is bounded (who may enter): wrong room codes and wrong operator tokens count per
//! client address, so that no number of connections, each allowed three wrong codes, makes a
//! brute force of the code any faster than [`WRONG_PER_WINDOW`] guesses a minute per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::capacity::source_of;
use crate::secret::Secret;

/// Wrong codes and tokens one address may send within [`GUESS_WINDOW`]; past them its
/// attempts get `rate_limited` and a 4003 close, whatever they send, until the window ends.
/// A person mistyping the code a few times is far below it; with it, trying every code of 8
/// random lowercase letters and digits (36^8) from one address would take half a million years.
pub const WRONG_PER_WINDOW: u32 = 10;
/// The window wrong guesses are counted in, from the first of them.
pub const GUESS_WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at once. Past it the windows that have ended are forgotten, then the
/// oldest: memory stays bounded (about 4 MB) however many addresses guess.
const REMEMBERED_ADDRESSES: usize = 65_536;

/// What a guess came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Right,
    Wrong,
    /// The address had used up its wrong guesses for the window: not even compared.
    Blocked,
}

/// One address's window: when its first wrong guess came, and how many there have been.
#[derive(Debug, Clone, Copy)]
struct Window {
    opened: Instant,
    wrong: u32,
}

/// Wrong guesses per client address (an IPv6 /64 as one), shared by every connection thread.
#[derive(Debug, Default)]
pub struct Guesses {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

impl Guesses {
    /// Whether `client` has used up its wrong guesses for now.
    pub fn blocked(&self, client: IpAddr) -> bool {
        self.blocked_at(client, Instant::now())
    }

    /// Compares `given` with `secret` for `client`, unless `client` is blocked, and counts it
    /// if wrong (with no secret, every guess is wrong: a token sent to a server without
    /// operators counts like any other). Checked and counted under one lock, so that guesses
    /// sent at once on many connections cannot slip past the limit together.
    pub fn check(&self, client: IpAddr, secret: Option<&Secret>, given: &str) -> Verdict {
        self.check_at(client, secret, given, Instant::now())
    }

    fn blocked_at(&self, client: IpAddr, now: Instant) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        windows
            .get(&source_of(client))
            .is_some_and(|w| w.wrong >= WRONG_PER_WINDOW && now < w.opened + GUESS_WINDOW)
    }

    fn check_at(
        &self,
        client: IpAddr,
        secret: Option<&Secret>,
        given: &str,
        now: Instant,
    ) -> Verdict {
        let address = source_of(client);
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window = windows
            .get(&address)
            .filter(|w| now < w.opened + GUESS_WINDOW);
        if window.is_some_and(|w| w.wrong >= WRONG_PER_WINDOW) {
            return Verdict::Blocked;
        }
        if secret.is_some_and(|secret| secret.matches(given)) {
            return Verdict::Right;
        }
        let wrong = window.map_or(0, |w| w.wrong) + 1;
        let opened = window.map_or(now, |w| w.opened);
        if !windows.contains_key(&address) && windows.len() >= REMEMBERED_ADDRESSES {
            forget_some(&mut windows, now);
        }
        windows.insert(address, Window { opened, wrong });
        Verdict::Wrong
    }
}

/// Makes room for one more address: windows that have ended go, or else the oldest.
fn forget_some(windows: &mut HashMap<IpAddr, Window>, now: Instant) {
    windows.retain(|_, w| now < w.opened + GUESS_WINDOW);
    if windows.len() >= REMEMBERED_ADDRESSES {
        let oldest = windows
            .iter()
            .min_by_key(|(_, w)| w.opened)
            .map(|(a, _)| *a);
        if let Some(oldest) = oldest {
            windows.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn operators_access_ten_wrong_guesses_a_minute_per_address_then_nothing_is_compared() {
        let code = Secret::parse("letmein").unwrap();
        let code = Some(&code);
        let guesses = Guesses::default();
        let start = Instant::now();
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        for n in 0..WRONG_PER_WINDOW {
            let at = start + Duration::from_secs(u64::from(n));
            assert_eq!(guesses.check_at(a, code, "guess", at), Verdict::Wrong);
        }
        let soon = start + Duration::from_secs(30);
        assert!(guesses.blocked_at(a, soon));
        assert_eq!(
            guesses.check_at(a, code, "letmein", soon),
            Verdict::Blocked,
            "even the right code"
        );
        assert_eq!(guesses.check_at(b, code, "letmein", soon), Verdict::Right);
        assert!(!guesses.blocked_at(b, soon), "other addresses are not held");
        // The window runs from the first wrong guess; once it is over, guessing starts afresh.
        let later = start + GUESS_WINDOW;
        assert!(!guesses.blocked_at(a, later));
        assert_eq!(guesses.check_at(a, code, "guess", later), Verdict::Wrong);
        assert_eq!(guesses.check_at(a, code, "letmein", later), Verdict::Right);
    }

    #[test]
    fn operators_access_an_ipv6_client_guesses_as_its_64() {
        let code = Secret::parse("letmein").unwrap();
        let code = Some(&code);
        let guesses = Guesses::default();
        let now = Instant::now();
        for n in 0..WRONG_PER_WINDOW {
            let address: IpAddr = format!("2001:db8::{n:x}").parse().unwrap();
            guesses.check_at(address, code, "guess", now);
        }
        let fresh: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert_eq!(
            guesses.check_at(fresh, code, "letmein", now),
            Verdict::Blocked
        );
    }

    #[test]
    fn operators_access_guessing_from_many_addresses_keeps_memory_bounded() {
        let code = Secret::parse("letmein").unwrap();
        let code = Some(&code);
        let guesses = Guesses::default();
        let now = Instant::now();
        for n in 0..REMEMBERED_ADDRESSES as u32 + 10 {
            let address = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
            guesses.check_at(address, code, "guess", now);
        }
        let windows = guesses.windows.lock().unwrap();
        assert_eq!(windows.len(), REMEMBERED_ADDRESSES);
    }
}
