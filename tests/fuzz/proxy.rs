//! PROXY protocol headers (v1 text, v2 binary with nested TLVs) as a trusted load balancer, or
//! anyone pretending to be one, may send them ahead of the PostgreSQL startup.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pgmeridian::proxy_protocol::{looks_like_header, parse, Parsed, V2_SIGNATURE};
use proptest::prelude::*;

use crate::alloc::peak_growth;
use crate::gen;
use crate::{cases, Case};

/// The longest header the proxy waits for: 16 fixed bytes and a 16-bit payload length.
const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// A TLV, possibly the SSL one with sub-TLVs nested `depth` deep.
fn tlv(depth: u32) -> BoxedStrategy<Vec<u8>> {
    let leaf = (
        proptest::sample::select(vec![0x01u8, 0x02, 0x03, 0x04, 0x05, 0x21, 0x22, 0x23, 0x30]),
        gen::bytes(40),
    )
        .prop_map(|(t, v)| encode_tlv(t, &v))
        .boxed();
    if depth == 0 {
        return leaf;
    }
    let ssl = (
        any::<u8>(),
        any::<u32>(),
        proptest::collection::vec(tlv(depth - 1), 0..3),
    )
        .prop_map(|(client, verify, subs)| {
            let mut v = vec![client];
            v.extend_from_slice(&verify.to_be_bytes());
            v.extend(subs.concat());
            encode_tlv(0x20, &v)
        });
    prop_oneof![2 => leaf, 1 => ssl].boxed()
}

fn encode_tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

/// A well-formed v2 header and the client it names (None for LOCAL and non-IP families).
fn v2_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    let family = prop_oneof![Just(0u8), Just(1), Just(2), Just(3)];
    (
        any::<bool>(),
        family,
        0u8..3,
        gen::bytes(216),
        any::<[u8; 36]>(),
        proptest::collection::vec(tlv(3), 0..4),
    )
        .prop_map(|(proxy, family, transport, unix, ip, tlvs)| {
            let mut addrs = match family {
                1 => ip[..12].to_vec(),
                2 => ip.to_vec(),
                3 => {
                    let mut u = unix;
                    u.resize(216, 0);
                    u
                }
                _ => Vec::new(),
            };
            let client = match (proxy, family) {
                (true, 1) => Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])),
                    u16::from_be_bytes([ip[8], ip[9]]),
                )),
                (true, 2) => Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&ip[..16]).unwrap())),
                    u16::from_be_bytes([ip[32], ip[33]]),
                )),
                _ => None,
            };
            addrs.extend(tlvs.concat());
            let mut h = V2_SIGNATURE.to_vec();
            h.push(0x20 | u8::from(proxy));
            h.push(family << 4 | transport);
            h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
            h.extend_from_slice(&addrs);
            (h, client)
        })
}

/// A well-formed v1 header and the client it names.
fn v1_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    let tcp4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(s, d, sp, dp)| {
            let (s, d) = (Ipv4Addr::from(s), Ipv4Addr::from(d));
            let h = format!("PROXY TCP4 {s} {d} {sp} {dp}\r\n");
            (h.into_bytes(), Some(SocketAddr::new(IpAddr::V4(s), sp)))
        });
    let tcp6 = (
        any::<[u8; 16]>(),
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(|(s, d, sp, dp)| {
            let (s, d) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let h = format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n");
            (h.into_bytes(), Some(SocketAddr::new(IpAddr::V6(s), sp)))
        });
    prop_oneof![
        3 => tcp4,
        3 => tcp6,
        1 => Just((b"PROXY UNKNOWN\r\n".to_vec(), None)),
    ]
}

fn header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    prop_oneof![v1_header(), v2_header()]
}

/// Checks one parse of `buf`: a complete header lies within the bytes and the size limit; the
/// proxy waits for more only while the bytes can still become a header.
fn check(buf: &[u8]) -> Result<Parsed, TestCaseError> {
    let (parsed, grew) = peak_growth(|| parse(buf));
    prop_assert!(grew <= 4096 + 2 * buf.len(), "parse allocated {grew} bytes");
    match &parsed {
        Parsed::Complete { len, .. } => prop_assert!(*len <= buf.len() && *len <= MAX_HEADER),
        Parsed::Incomplete => prop_assert!(buf.len() < MAX_HEADER),
        Parsed::Invalid(_) => {}
    }
    Ok(parsed)
}

proptest! {
    #![proptest_config(cases(1000))]

    /// A valid header names its client, whatever follows it, and every prefix of it waits for
    /// more (the proxy reads a header in as many pieces as the network delivers).
    #[test]
    fn valid_headers_parse_from_any_prefix(
        (h, client) in header(),
        after in gen::bytes(64),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..6),
    ) {
        let _case = Case::start("valid_headers_parse_from_any_prefix");
        let whole = [h.clone(), after].concat();
        prop_assert_eq!(check(&whole)?, Parsed::Complete { client, len: h.len() });
        for cut in cuts {
            let prefix = &h[..cut.index(h.len())];
            if !prefix.is_empty() {
                prop_assert!(looks_like_header(prefix));
            }
            prop_assert_eq!(check(prefix)?, Parsed::Incomplete, "prefix {:?}", prefix);
        }
    }

    /// Damaged headers and random bytes: never a panic, a complete header never claims more
    /// than it was given, and once complete, more bytes do not change the verdict.
    #[test]
    fn damaged_headers_are_refused_or_bounded(
        (h, _) in header(),
        muts in gen::mutations(),
        raw in gen::bytes(300),
        use_raw in proptest::bool::weighted(0.2),
        prefix_sig in any::<bool>(),
    ) {
        let _case = Case::start("damaged_headers_are_refused_or_bounded");
        let data = if use_raw {
            let lead: &[u8] = if prefix_sig { V2_SIGNATURE } else { b"PROXY " };
            [lead, &raw].concat()
        } else {
            gen::mutate(h, &muts)
        };
        let mut complete: Option<Parsed> = None;
        for end in 0..=data.len() {
            let got = check(&data[..end])?;
            if let Some(first) = &complete {
                prop_assert_eq!(&got, first, "more bytes changed a complete header");
            } else if matches!(got, Parsed::Complete { .. }) {
                complete = Some(got);
            }
        }
    }
}

#[test]
fn longest_v2_header_with_tlvs_is_complete_and_one_byte_short_is_not() {
    // 12 address bytes and NOOP TLVs filling the 65,535-byte payload exactly.
    let mut tlvs: Vec<u8> = (0..258u32)
        .flat_map(|i| encode_tlv(0x04, &[i as u8; 250]))
        .collect();
    tlvs.extend(encode_tlv(0x04, &[0; 246]));
    let mut addrs = vec![127, 0, 0, 9, 127, 0, 0, 1, 0x1f, 0x90, 0x19, 0x2c];
    addrs.extend_from_slice(&tlvs);
    assert_eq!(addrs.len(), u16::MAX as usize);
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11]);
    h.extend_from_slice(&u16::MAX.to_be_bytes());
    h.extend_from_slice(&addrs);
    assert_eq!(h.len(), MAX_HEADER);
    assert!(matches!(parse(&h), Parsed::Complete { len, .. } if len == MAX_HEADER));
    assert_eq!(parse(&h[..MAX_HEADER - 1]), Parsed::Incomplete);
}
