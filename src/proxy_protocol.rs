//! PROXY protocol (v1 text, v2 binary) in front of the PostgreSQL startup: from trusted load
//! balancers the header is required and names the real client; from anyone else it is refused.
//! Parsing is `ppp`'s; this module only decides trust and reads until the header is complete.

use std::net::{IpAddr, SocketAddr};

use bytes::{Buf, BytesMut};
use ipnet::IpNet;
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature. (A v1 header starts with `PROXY `.) Neither can begin a PostgreSQL
/// startup packet: read as its length, each is far beyond any valid one.
pub const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A whole v2 header with the `LOCAL` command (no addresses: the connection stands for
/// itself), which this proxy sends before a CancelRequest it forwards to a peer that expects a
/// header from it (`peers[].proxy_protocol`).
pub const V2_LOCAL: [u8; 16] = [
    b'\r', b'\n', b'\r', b'\n', 0, b'\r', b'\n', b'Q', b'U', b'I', b'T', b'\n', 0x20, 0x00, 0, 0,
];
/// The largest v2 header (16 fixed bytes and a 16-bit payload length).
const MAX_HEADER: usize = 16 + u16::MAX as usize;

pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|n| n.contains(&peer))
}

/// Whether `buf` (non-empty) starts like a PROXY header of either version, as far as it goes.
pub fn looks_like_header(buf: &[u8]) -> bool {
    const V1: &[u8] = b"PROXY ";
    let n = buf.len().min(V2_SIGNATURE.len());
    let m = buf.len().min(V1.len());
    !buf.is_empty() && (buf[..n] == V2_SIGNATURE[..n] || buf[..m] == V1[..m])
}

#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A full header of `len` bytes; `client` is None for `LOCAL` / `UNKNOWN` (health checks
    /// from the balancer itself), whose connection then stands for itself.
    Complete {
        client: Option<SocketAddr>,
        len: usize,
    },
    Incomplete,
    Invalid(String),
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Parsed {
    // A v1 header ends at its CRLF within 107 bytes. Before that, a prefix cut inside a field
    // ("…1000 " without its destination port yet) would look invalid to the parser: wait.
    let v1 = buf.starts_with(b"PROXY");
    let v1_done = v1 && (buf.len() >= 107 || buf.windows(2).any(|w| w == b"\r\n"));
    if v1 && !v1_done {
        return Parsed::Incomplete;
    }
    let header = HeaderResult::parse(buf);
    // A parser still wanting more of a v1 header that has ended is wrong.
    if header.is_incomplete() && v1_done {
        return Parsed::Invalid("invalid PROXY v1 header".into());
    }
    if header.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Parsed::Invalid("PROXY header too long".into())
        } else {
            Parsed::Incomplete
        };
    }
    match header {
        HeaderResult::V1(Ok(h)) => Parsed::Complete {
            len: h.header.len(),
            client: match h.addresses {
                v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                v1::Addresses::Unknown => None,
            },
        },
        HeaderResult::V2(Ok(h)) => Parsed::Complete {
            len: h.len(),
            client: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                _ => None,
            },
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(format!("invalid PROXY v1 header: {e}")),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(format!("invalid PROXY v2 header: {e}")),
    }
}

/// Reads the header a trusted peer must send. Returns the client address (the peer's own for
/// `LOCAL`/`UNKNOWN`) and the bytes that followed the header in the same reads.
pub async fn read_header(
    tcp: &mut TcpStream,
    peer: SocketAddr,
) -> Result<(SocketAddr, BytesMut), String> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        if !buf.is_empty() && !looks_like_header(&buf) {
            return Err(format!(
                "expected a PROXY protocol header from {} (listed in proxy_protocol.trusted)",
                peer.ip()
            ));
        }
        match parse(&buf) {
            Parsed::Complete { client, len } => {
                buf.advance(len);
                return Ok((client.unwrap_or(peer), buf));
            }
            Parsed::Invalid(e) => return Err(e),
            Parsed::Incomplete => {}
        }
        buf.reserve(512);
        match tcp.read_buf(&mut buf).await {
            Ok(0) => return Err("connection closed before the PROXY header ended".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("reading the PROXY header: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn parses_headers_of_both_versions() {
        let v4 = v2(
            1,
            0x11,
            &[203, 0, 113, 7, 10, 0, 0, 1, 0x1f, 0x90, 0x19, 0x2c],
        );
        let mut v6_addrs = vec![0u8; 36];
        v6_addrs[0] = 0x20;
        v6_addrs[1] = 0x01;
        v6_addrs[15] = 1;
        let v6 = v2(1, 0x21, &v6_addrs);
        let cases: Vec<(&str, Vec<u8>, Parsed)> = vec![
            (
                "v1 tcp4",
                b"PROXY TCP4 198.51.100.9 10.0.0.1 4000 6432\r\nrest".to_vec(),
                Parsed::Complete {
                    client: Some("198.51.100.9:4000".parse().unwrap()),
                    len: 44,
                },
            ),
            (
                "v1 tcp6",
                b"PROXY TCP6 2001:db8::1 ::1 4000 6432\r\n".to_vec(),
                Parsed::Complete {
                    client: Some("[2001:db8::1]:4000".parse().unwrap()),
                    len: 38,
                },
            ),
            (
                "v1 unknown keeps the peer",
                b"PROXY UNKNOWN\r\n".to_vec(),
                Parsed::Complete {
                    client: None,
                    len: 15,
                },
            ),
            (
                "v2 ipv4",
                v4.clone(),
                Parsed::Complete {
                    client: Some("203.0.113.7:8080".parse().unwrap()),
                    len: 28,
                },
            ),
            (
                "v2 ipv6",
                v6.clone(),
                Parsed::Complete {
                    client: Some("[2001::1]:0".parse().unwrap()),
                    len: 52,
                },
            ),
            (
                "v2 local keeps the peer",
                v2(0, 0x00, &[]),
                Parsed::Complete {
                    client: None,
                    len: 16,
                },
            ),
            (
                "our own v2 local",
                V2_LOCAL.to_vec(),
                Parsed::Complete {
                    client: None,
                    len: 16,
                },
            ),
            ("v2 cut short", v4[..20].to_vec(), Parsed::Incomplete),
            (
                "v1 cut short",
                b"PROXY TCP4 1.2.3".to_vec(),
                Parsed::Incomplete,
            ),
        ];
        for (name, bytes, want) in cases {
            assert_eq!(parse(&bytes), want, "{name}");
        }
        // Found by tests/fuzz: a v1 header arriving in two reads, the first ending before the
        // destination port, was refused as invalid.
        let v1 = b"PROXY TCP4 0.0.100.100 100.10.100.10 1000 2000\r\n";
        for cut in 0..v1.len() {
            assert_eq!(parse(&v1[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert!(matches!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n"),
            Parsed::Invalid(_)
        ));
        // Complete (CRLF seen, or longer than v1 allows) yet unparsable: no waiting for more.
        assert_ne!(
            parse(b"PROXY UNKNOWN a b c d e f g\r\n"),
            Parsed::Incomplete
        );
        assert!(matches!(
            parse(&[b"PROXY ".as_slice(), &[b'x'; 120]].concat()),
            Parsed::Invalid(_)
        ));
        let mut startup = vec![0, 0, 0, 8, 4, 210, 22, 47];
        startup.extend_from_slice(&[0; 8]);
        assert!(matches!(parse(&startup), Parsed::Invalid(_)));
    }

    #[test]
    fn recognises_header_starts_and_trust() {
        assert!(looks_like_header(b"PROXY TCP4"));
        assert!(looks_like_header(&V2_SIGNATURE[..6]));
        assert!(!looks_like_header(&[0, 0, 0, 8, 4, 210, 22, 47]));
        assert!(looks_like_header(b"\r\n"));
        assert!(looks_like_header(b"PRO"));
        assert!(!looks_like_header(b""));
        assert!(!looks_like_header(b"PROXX"));
        let trusted = vec![
            crate::config::parse_cidr("10.0.0.0/8").unwrap(),
            crate::config::parse_cidr("::1").unwrap(),
        ];
        assert!(is_trusted("10.1.2.3".parse().unwrap(), &trusted));
        assert!(is_trusted("::ffff:10.1.2.3".parse().unwrap(), &trusted));
        assert!(is_trusted("::1".parse().unwrap(), &trusted));
        assert!(!is_trusted("11.0.0.1".parse().unwrap(), &trusted));
        assert!(!is_trusted("127.0.0.1".parse().unwrap(), &trusted));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse(&bytes);
            let mut with_sig = V2_SIGNATURE.to_vec();
            with_sig.extend_from_slice(&bytes);
            let _ = parse(&with_sig);
            let mut v1 = b"PROXY ".to_vec();
            v1.extend_from_slice(&bytes);
            let _ = parse(&v1);
        }
    }
}
