//! The untagged startup-phase packets (StartupMessage, SSLRequest, GSSENCRequest,
//! CancelRequest) and what the proxy reads out of a startup packet's parameters (`options`,
//! its own `pgmeridian.*` settings, a causal token).

use pgmeridian::causal::Token;
use pgmeridian::geo::{parse_location, split_options, take_ours};
use pgmeridian::protocol::startup::{self, StartupPacket, MAX_STARTUP_LEN};
use pgmeridian::wire::{MessageIo, WireError};
use proptest::prelude::*;

use crate::alloc::peak_growth;
use crate::gen::{self, chunked_peer, Length};
use crate::{cases, Case};

const CODES: &[u32] = &[
    196_608,    // 3.0
    196_610,    // 3.2
    80_877_103, // SSLRequest
    80_877_104, // GSSENCRequest
    80_877_102, // CancelRequest
    131_072,    // 2.0
];

/// A parameter name or value: the ones the proxy acts on, ordinary text, or anything.
fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::sample::select(vec![
            "user", "database", "options", "application_name", "client_encoding",
            "replication", "pgmeridian.region", "pgmeridian.location",
            "pgmeridian.causal_token", "PGMERIDIAN-REGION", "-c", "--", "eu-west", "app",
            "48.85,2.35", "pgm1:1:1:0/0", "LATIN1", "",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        2 => proptest::collection::vec(proptest::char::any(), 0..12)
            .prop_map(|c| c.into_iter().collect::<String>().into_bytes()),
        1 => gen::bytes(24),
    ]
}

/// A packet: a request code and a body (parameters, or a cancel key), a length word that may
/// lie, then mutations.
fn packet() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![4 => proptest::sample::select(CODES.to_vec()), 1 => any::<u32>()];
    let params = proptest::collection::vec((text(), text()), 0..8).prop_map(|ps| {
        let mut body = Vec::new();
        for (k, v) in ps {
            body.extend_from_slice(&k);
            body.push(0);
            body.extend_from_slice(&v);
            body.push(0);
        }
        body.push(0);
        body
    });
    let body = prop_oneof![3 => params, 1 => gen::bytes(300)];
    (code, body, Length::strategy(), gen::mutations()).prop_map(|(code, body, len, muts)| {
        let mut p = len.word(body.len() + 4).to_be_bytes().to_vec();
        p.extend_from_slice(&code.to_be_bytes());
        p.extend_from_slice(&body);
        gen::mutate(p, &muts)
    })
}

proptest! {
    #![proptest_config(cases(1000))]

    /// Packets read one after another as a client sends them (SSLRequest then a startup, say):
    /// each read ends, a length outside 8..=10004 is refused before its body is awaited, and
    /// what parses is well-formed.
    #[test]
    fn startup_packets_are_bounded(
        first in packet(),
        second in packet(),
        sizes in gen::chunking(),
    ) {
        let _case = Case::start("startup_packets_are_bounded");
        let data = [first, second].concat();
        let mut io = MessageIo::new(chunked_peer(&data, &sizes));
        for _ in 0..2 {
            let (got, grew) = peak_growth(|| gen::run_now(io.read_startup()));
            prop_assert!(grew <= 64 * MAX_STARTUP_LEN, "grew {grew}");
            prop_assert!(io.rbuf.capacity() <= 16 * data.len().max(8192));
            match got {
                Ok(StartupPacket::Startup { params, .. }) => {
                    for (i, (k, _)) in params.iter().enumerate() {
                        prop_assert!(!k.is_empty() && !k.contains('\0'));
                        prop_assert!(params[..i].iter().all(|(n, _)| n != k), "{k} twice");
                    }
                }
                Ok(StartupPacket::Cancel { key, .. }) => {
                    prop_assert!((4..=256).contains(&key.len()));
                }
                Ok(_) => {}
                Err(WireError::Startup(_) | WireError::Eof) => break,
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
    }

    /// A startup packet built from valid parameters parses back to them, the last of a
    /// repeated name winning.
    #[test]
    fn startup_parameters_round_trip(
        params in proptest::collection::vec(
            ("[a-z_.]".prop_map(String::from), proptest::collection::vec(1u8..=127, 0..16)),
            0..10),
    ) {
        let _case = Case::start("startup_parameters_round_trip");
        let params: Vec<(String, String)> = params
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v).unwrap()))
            .collect();
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (k, v) in &params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut want: Vec<(String, String)> = Vec::new();
        for (k, v) in params {
            want.retain(|(n, _)| *n != k);
            want.push((k, v));
        }
        prop_assert_eq!(
            startup::parse(&body).unwrap(),
            StartupPacket::Startup { minor: 0, params: want }
        );
    }

    /// The proxy's own startup settings (`pgmeridian.region`, `.location`, `.causal_token`,
    /// also inside `options`) are taken out wherever they are, and what stays in `options` is
    /// re-escaped so that the server splits it into the same tokens.
    #[test]
    fn own_settings_never_reach_the_server(
        params_in in proptest::collection::vec((text(), text()), 0..6),
        options in proptest::collection::vec(text(), 0..8),
        separators in proptest::collection::vec(
            proptest::sample::select(vec![" ", "  ", "\t", "\\ ", "=", " -c ", "\\\\"]), 1..4),
    ) {
        let _case = Case::start("own_settings_never_reach_the_server");
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let mut joined = String::new();
        for (i, o) in options.iter().enumerate() {
            joined.push_str(&lossy(o));
            joined.push_str(separators[i % separators.len()]);
        }
        // As `startup::parse` leaves them: one value per name, the last one sent.
        let mut params: Vec<(String, String)> = Vec::new();
        for (k, v) in params_in.iter().map(|(k, v)| (lossy(k), lossy(v))) {
            params.retain(|(n, _)| *n != k);
            params.push((k, v));
        }
        params.retain(|(n, _)| n != "options");
        params.push(("options".into(), joined));
        let taken = take_ours(&mut params);
        let ours = |name: &str| {
            let n = name.to_ascii_lowercase().replace('-', "_");
            ["pgmeridian.region", "pgmeridian.location", "pgmeridian.causal_token"]
                .contains(&n.as_str())
        };
        for (k, v) in &params {
            prop_assert!(!ours(k), "{k} left in the startup packet");
            if k == "options" {
                let tokens = split_options(v);
                let mut it = tokens.iter();
                while let Some(t) = it.next() {
                    let setting = if t == "-c" { it.next().map(String::as_str) } else {
                        t.strip_prefix("--").or_else(|| t.strip_prefix("-c"))
                    };
                    if let Some((name, _)) = setting.and_then(|s| s.split_once('=')) {
                        prop_assert!(!ours(name), "{name} left in options {v:?}");
                    }
                }
            }
        }
        if let Some(token) = taken.causal_token {
            let _ = Token::parse(&token);
        }
    }

    /// Client-supplied locations and causal tokens: anything is refused or read, never a
    /// panic; a token the proxy formats reads back the same.
    #[test]
    fn locations_and_tokens(
        text in proptest::collection::vec(
            proptest::sample::select(vec!["pgm1", ":", "0", "1", "9", "F", "/", "-", ".", ",",
                "18446744073709551616", "4294967296", " ", "e", "nan", "inf", "90.0001", "é"]),
            0..12),
        system_id in any::<u64>(),
        timeline in 1u32..,
        lsn in any::<u64>(),
    ) {
        let _case = Case::start("locations_and_tokens");
        let text = text.concat();
        if let Ok(r) = parse_location(&text) {
            prop_assert!((-90.0..=90.0).contains(&r.lat) && (-180.0..=180.0).contains(&r.lon));
        }
        let _ = Token::parse(&text);
        let token = Token { system_id, timeline, lsn };
        prop_assert_eq!(Token::parse(&token.format()), Ok(token));
    }
}
