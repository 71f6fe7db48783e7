//! Addresses as the per-address rules count them (hardening, and who may enter): one source
//! per IPv4 address or IPv6 /64, and blocks of addresses (`--trust-proxy 10.0.0.0/8`).

use std::fmt;
use std::net::IpAddr;

/// The address a client counts as, for every per-address rule (handshakes, arrivals, guesses,
/// bans): IPv4 as it is, IPv6 by its /64 (one machine usually has a whole /64 to pick from, so
/// a rule on one IPv6 address would hold nobody), and IPv4 written as IPv6 as the IPv4 it is.
pub fn source_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6([s[0], s[1], s[2], s[3], 0, 0, 0, 0].into())
        }
        v4 => v4,
    }
}

/// An IP address or a CIDR block: `127.0.0.1`, `10.0.0.0/8`, `::1`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressBlock {
    /// The block's first address (bits past the prefix cleared).
    base: IpAddr,
    prefix: u8,
}

impl AddressBlock {
    /// Reads an address (a block of one) or `address/prefix`. Bits past the prefix are
    /// ignored: `10.1.2.3/8` is `10.0.0.0/8`.
    ///
    /// # Errors
    /// A sentence saying what is expected.
    pub fn parse(text: &str) -> Result<AddressBlock, String> {
        let bad = || format!("{text:?} is not an IP address or a CIDR block (such as 10.0.0.0/8)");
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let address = address.to_canonical();
        let bits = match address {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits && !prefix.starts_with('+'))
                .ok_or_else(bad)?,
            None => bits,
        };
        Ok(AddressBlock {
            base: masked(address, prefix),
            prefix,
        })
    }

    /// Whether `address` is in this block (an IPv4 address written as IPv6 counts as IPv4).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = address.to_canonical();
        let same_family = address.is_ipv4() == self.base.is_ipv4();
        same_family && masked(address, self.prefix) == self.base
    }
}

impl fmt::Display for AddressBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

/// `address` with every bit past the first `prefix` cleared.
fn masked(address: IpAddr, prefix: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn operators_proxy_blocks_contain_what_their_prefix_says() {
        let loopback = AddressBlock::parse("127.0.0.0/8").unwrap();
        assert!(loopback.contains(ip("127.9.9.9")));
        assert!(loopback.contains(ip("::ffff:127.0.0.1")), "IPv4 as IPv6");
        assert!(!loopback.contains(ip("128.0.0.1")));
        let one = AddressBlock::parse("10.1.2.3").unwrap();
        assert!(one.contains(ip("10.1.2.3")) && !one.contains(ip("10.1.2.4")));
        assert_eq!(
            AddressBlock::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        let everyone = AddressBlock::parse("0.0.0.0/0").unwrap();
        assert!(everyone.contains(ip("1.2.3.4")) && !everyone.contains(ip("::1")));
        let v6 = AddressBlock::parse("fd00::/8").unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!(AddressBlock::parse("::1").unwrap().contains(ip("::1")));
        for bad in [
            "",
            "nginx",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "::1/129",
            "1.2.3",
        ] {
            assert!(AddressBlock::parse(bad).is_err(), "{bad:?}");
        }
    }
}
