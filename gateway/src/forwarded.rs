//! Who is the client behind a load balancer: `X-Forwarded-For` and RFC 7239 `Forwarded`,
//! believed only when the TCP peer is a trusted proxy (`device.trusted_proxies`).
//!
//! Each proxy appends the address it received the request from, so the list is read from the
//! right: the client is the rightmost address that is not itself a trusted proxy (a client can
//! put anything on the left of the list, never on the right of what our own proxies append).
//! When every address is a trusted proxy, the leftmost is the client; an entry that is not an
//! address (`unknown`, an obfuscated `_node`, garbage) ends the walk at the address to its
//! right. Headers from any other peer are ignored (logged at debug): anyone can send them.
//!
//! This module decides addresses only; it does not decide identities (see [`crate::identity`],
//! which uses the same [`TrustedProxies`] for the client-certificate header).

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
pub const FORWARDED: &str = "forwarded";

/// The networks of the load balancers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// An IPv4 peer may show up as an IPv4-mapped IPv6 address on dual-stack sockets.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in one of the trusted networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that came from `peer` with `headers`: from the
    /// forwarding headers when `peer` is trusted, else `peer` itself. `Forwarded` wins over
    /// `X-Forwarded-For` when a proxy sends both (it is the standard one).
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        let has = |name: &str| headers.contains_key(name);
        if !has(FORWARDED) && !has(X_FORWARDED_FOR) {
            return peer;
        }
        if !self.contains(peer) {
            tracing::debug!(%peer, "forwarding headers from a peer that is not a trusted proxy; ignored");
            return peer;
        }
        let hops = if has(FORWARDED) { forwarded_for(headers) } else { x_forwarded_for(headers) };
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_node(hop) else { break };
            client = canonical(ip);
            if !self.contains(client) {
                break;
            }
        }
        client
    }
}

/// Every `X-Forwarded-For` entry, all header lines in order.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|s| s.trim().to_owned())
        .collect()
}

/// The `for=` value of every `Forwarded` element (RFC 7239 §4), all header lines in order; an
/// element without `for=` counts as an unknown hop.
fn forwarded_for(headers: &HeaderMap) -> Vec<String> {
    let mut out = Vec::new();
    for line in headers.get_all(FORWARDED).iter() {
        let line = line.to_str().unwrap_or("");
        for element in split_outside_quotes(line, ',') {
            let value = split_outside_quotes(&element, ';').into_iter().find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim().trim_matches('"').to_owned())
            });
            out.push(value.unwrap_or_default());
        }
    }
    out
}

/// Splits on `sep` except inside double quotes (quoted values carry `:` and `,` safely).
fn split_outside_quotes(s: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`. `None` for anything else.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(|p| p.parse::<u16>().is_ok())) {
            return None;
        }
        return inner.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().expect("net")).collect())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn rightmost_untrusted_address_is_the_client() {
        let p = proxies(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.2");
        // A client that forged a left part: the proxy appended the real address on the right.
        let h = headers(&[("X-Forwarded-For", "6.6.6.6, 203.0.113.7")]);
        assert_eq!(p.client_address(peer, &h), ip("203.0.113.7"));
        // Two proxies in a row: the inner one's address is skipped.
        let h = headers(&[("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.1.2.3")]);
        assert_eq!(p.client_address(peer, &h), ip("203.0.113.7"));
        // Several header lines are one list.
        let h = headers(&[("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.8:5555, 10.1.2.3")]);
        assert_eq!(p.client_address(peer, &h), ip("203.0.113.8"));
        // Every hop trusted: the leftmost.
        let h = headers(&[("X-Forwarded-For", "10.9.9.9, 10.1.2.3")]);
        assert_eq!(p.client_address(peer, &h), ip("10.9.9.9"));
        // Garbage ends the walk at the address to its right.
        let h = headers(&[("X-Forwarded-For", "203.0.113.9, unknown, 10.1.2.3")]);
        assert_eq!(p.client_address(peer, &h), ip("10.1.2.3"));
        let h = headers(&[("X-Forwarded-For", "")]);
        assert_eq!(p.client_address(peer, &h), peer);
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let p = proxies(&["10.0.0.0/8"]);
        let h = headers(&[("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=203.0.113.7")]);
        assert_eq!(p.client_address(ip("198.51.100.1"), &h), ip("198.51.100.1"));
        // No trusted proxies at all: nothing is believed.
        assert_eq!(proxies(&[]).client_address(ip("10.0.0.2"), &h), ip("10.0.0.2"));
        // An IPv4-mapped peer is the IPv4 address, trusted or not.
        assert_eq!(p.client_address(ip("::ffff:10.0.0.2"), &h), ip("203.0.113.7"));
        assert_eq!(p.client_address(ip("::ffff:198.51.100.1"), &h), ip("198.51.100.1"));
    }

    #[test]
    fn rfc7239_forwarded() {
        let p = proxies(&["10.0.0.0/8", "fd00::/8"]);
        let peer = ip("10.0.0.2");
        // RFC 7239 §4 examples, quoted IPv6 with a port, other parameters around.
        let h =
            headers(&[("Forwarded", r#"for=192.0.2.60;proto=http;by=203.0.113.43, For="[2001:db8:cafe::17]:4711""#)]);
        assert_eq!(p.client_address(peer, &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("Forwarded", r#"for=192.0.2.43, for="[fd00::1]""#)]);
        assert_eq!(p.client_address(peer, &h), ip("192.0.2.43"));
        // `unknown` and obfuscated identifiers are not addresses.
        let h = headers(&[("Forwarded", "for=192.0.2.43, for=_hidden, for=10.0.0.9")]);
        assert_eq!(p.client_address(peer, &h), ip("10.0.0.9"));
        // Forwarded wins over X-Forwarded-For.
        let h = headers(&[("Forwarded", "for=192.0.2.1"), ("X-Forwarded-For", "192.0.2.2")]);
        assert_eq!(p.client_address(peer, &h), ip("192.0.2.1"));
    }

    #[test]
    fn node_forms() {
        assert_eq!(parse_node("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(parse_node("2001:db8::1"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]"), Some(ip("2001:db8::1")));
        assert_eq!(parse_node("[2001:db8::1]:443"), Some(ip("2001:db8::1")));
        for bad in ["unknown", "_x", "[2001:db8::1]x", "192.0.2.1:x", "host:80", ""] {
            assert_eq!(parse_node(bad), None, "{bad}");
        }
    }
}
