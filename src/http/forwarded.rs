//! The client address behind a reverse proxy (`--trust-proxy`): a TLS proxy in front of the
//! chat makes every connection come from the proxy, and only the proxy's `X-Forwarded-For`
//! says who the client is. Anyone can write that header, so it is read only from a trusted
//! peer, and only as far as the trusted proxies wrote it.

use std::net::{IpAddr, SocketAddr};

use super::RequestHead;
use crate::capacity::AddressBlock;

/// Whether `peer` is one of the trusted proxies.
pub fn is_trusted(peer: IpAddr, proxies: &[AddressBlock]) -> bool {
    proxies.iter().any(|block| block.contains(peer))
}

/// The client address of a request from `peer`: for a trusted peer, the rightmost
/// `X-Forwarded-For` entry that is not itself a trusted proxy (each proxy appends the address
/// it heard from, so entries further left were written by the client and prove nothing);
/// the peer's own address when the header names nobody else, and for any other peer,
/// whatever its headers say.
pub fn client_address(peer: IpAddr, request: &RequestHead, proxies: &[AddressBlock]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, proxies) {
        return peer;
    }
    // Every header line, in order, each a comma-separated list: one list in all.
    let entries: Vec<&str> = request.tokens("X-Forwarded-For").collect();
    for entry in entries.iter().rev() {
        match parse_entry(entry) {
            Some(address) if is_trusted(address, proxies) => continue,
            Some(address) => return address,
            // Written by a proxy we trust, yet not an address: nobody further left can be
            // believed, so the connection counts as the proxy's own.
            None => return peer,
        }
    }
    peer
}

/// An `X-Forwarded-For` entry: `192.0.2.1`, `2001:db8::1`, and the forms with a port some
/// proxies write (`192.0.2.1:5000`, `[2001:db8::1]:5000`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let address = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse().ok())?;
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::parse_head;

    fn request(forwarded: &[&str]) -> RequestHead {
        let lines: String = forwarded
            .iter()
            .map(|value| format!("X-Forwarded-For: {value}\r\n"))
            .collect();
        let text = format!("GET / HTTP/1.1\r\nHost: x\r\n{lines}\r\n");
        parse_head(text.as_bytes()).unwrap().0
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn operators_proxy_the_client_is_the_rightmost_untrusted_entry() {
        let proxies = [
            AddressBlock::parse("127.0.0.1").unwrap(),
            AddressBlock::parse("10.0.0.0/8").unwrap(),
        ];
        let nginx = ip("127.0.0.1");
        let of = |forwarded: &[&str]| client_address(nginx, &request(forwarded), &proxies);
        assert_eq!(of(&["198.51.100.7"]), ip("198.51.100.7"));
        // A client that sends its own header only adds entries further left.
        assert_eq!(of(&["6.6.6.6, 198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(
            of(&["6.6.6.6", "198.51.100.7"]),
            ip("198.51.100.7"),
            "two lines"
        );
        // Proxies in a chain, each trusted, are passed over.
        assert_eq!(
            of(&["198.51.100.7, 10.1.1.1, 10.2.2.2"]),
            ip("198.51.100.7")
        );
        assert_eq!(of(&["[2001:db8::5]:4711"]), ip("2001:db8::5"));
        assert_eq!(of(&["198.51.100.7:4711"]), ip("198.51.100.7"));
        assert_eq!(of(&["::ffff:198.51.100.7"]), ip("198.51.100.7"));
        // Nobody else named: the proxy's own address.
        assert_eq!(of(&[]), nginx);
        assert_eq!(of(&["10.1.1.1"]), nginx);
        assert_eq!(
            of(&["6.6.6.6, garbage"]),
            nginx,
            "an entry that is no address"
        );
    }

    #[test]
    fn operators_proxy_an_untrusted_peer_is_its_own_address_whatever_it_sends() {
        let proxies = [AddressBlock::parse("127.0.0.1").unwrap()];
        let stranger = ip("203.0.113.9");
        let spoofed = request(&["198.51.100.7"]);
        assert_eq!(client_address(stranger, &spoofed, &proxies), stranger);
        assert_eq!(
            client_address(ip("127.0.0.1"), &spoofed, &[]),
            ip("127.0.0.1")
        );
        let mapped = ip("::ffff:203.0.113.9");
        assert_eq!(client_address(mapped, &spoofed, &proxies), stranger);
    }
}
