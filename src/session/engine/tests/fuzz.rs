//! Structured fuzzing of the engine: a hostile client and hostile servers interleaved at random
//! (valid-ish messages with wrong lengths, raw bytes, leases granted, refused and lost), and of
//! batching in every client encoding. Long run: `PROPTEST_CASES=100000 cargo test --release
//! --lib fuzz` (README, "Fuzzing").

use proptest::prelude::*;

use super::super::super::batch::{add, Batch, Ctx, Statements};
use super::*;
use crate::classify::{Class, ClientEncoding, WriteFunctions};
use crate::error::ClientError;
use crate::session::LearnedWrites;

fn cases(short: u32) -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = short;
    }
    config
}

/// A length word that is usually right.
fn framed(tag: u8, body: Vec<u8>, wrong: Option<u32>) -> Bytes {
    let mut m = BytesMut::new();
    m.put_u8(tag);
    m.put_u32(wrong.unwrap_or(body.len() as u32 + 4));
    m.put_slice(&body);
    m.freeze()
}

fn wrong_length() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        100 => Just(None),
        1 => prop_oneof![Just(0u32), Just(3), Just(5), Just(1 << 20), Just(u32::MAX), any::<u32>()]
            .prop_map(Some),
    ]
}

const SQL: &[&str] = &[
    "select 1",
    "insert into t values (1)",
    "begin",
    "begin read only",
    "commit",
    "rollback",
    "set search_path = a",
    "reset all",
    "discard all",
    "deallocate all",
    "listen x",
    "copy t from stdin",
    "copy t to stdout",
    "set pgmeridian.route = replica",
    "show pgmeridian.causal_token",
    "set pgmeridian.causal_token = 'pgm1:1:1:0/10'",
    "/* pgmeridian:replica */ select 1",
    "select 1; insert into t values (2)",
    "prepare p as select 1",
    "",
];

fn name() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(vec!["", "s1", "s2"])
}

fn client_message() -> impl Strategy<Value = Bytes> {
    let sql = proptest::sample::select(SQL);
    let cstr = |s: &str| [s.as_bytes(), b"\0"].concat();
    let structured = prop_oneof![
        4 => sql.prop_map(move |s| (b'Q', cstr(s))),
        3 => (name(), proptest::sample::select(SQL)).prop_map(move |(n, s)| {
            (b'P', [cstr(n), cstr(s), vec![0, 0]].concat())
        }),
        3 => name().prop_map(move |n| (b'B', [vec![0], cstr(n), vec![0, 0, 0, 0, 0, 0]].concat())),
        1 => name().prop_map(move |n| (b'D', [vec![b'S'], cstr(n)].concat())),
        1 => Just((b'D', b"P\0".to_vec())),
        1 => name().prop_map(move |n| (b'C', [vec![b'S'], cstr(n)].concat())),
        1 => Just((b'C', b"P\0".to_vec())),
        3 => Just((b'E', vec![0, 0, 0, 0, 0])),
        3 => Just((b'S', Vec::new())),
        1 => Just((b'H', Vec::new())),
        1 => proptest::collection::vec(any::<u8>(), 0..20).prop_map(|d| (b'd', d)),
        1 => Just((b'c', Vec::new())),
        1 => Just((b'f', b"no\0".to_vec())),
        1 => Just((b'F', vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0])),
    ];
    prop_oneof![
        200 => (structured, wrong_length()).prop_map(|((t, b), w)| framed(t, b, w)),
        1 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(t, b)| framed(t, b, None)),
        1 => proptest::collection::vec(any::<u8>(), 1..30).prop_map(Bytes::from),
        1 => Just(framed(b'X', Vec::new(), None)),
    ]
}

fn server_message() -> impl Strategy<Value = Bytes> {
    let error = |code: &str, severity: &str| {
        let mut b = BytesMut::new();
        crate::protocol::encode::error_response(&mut b, severity, code, "m", None, None);
        b.freeze()
    };
    let tag = proptest::sample::select(vec![
        "SELECT 1",
        "INSERT 0 1",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SET",
        "CREATE TABLE",
        "DISCARD ALL",
        "DEALLOCATE ALL",
        "COPY 1",
        "LISTEN",
    ]);
    let structured = prop_oneof![
        6 => proptest::sample::select(b"ITE".to_vec()).prop_map(|s| (b'Z', vec![s])),
        1 => any::<u8>().prop_map(|s| (b'Z', vec![s])),
        4 => tag.prop_map(|t| (b'C', [t.as_bytes(), b"\0"].concat())),
        3 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(|v| {
            let mut b = vec![0, 1];
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend(v);
            (b'D', b)
        }),
        1 => Just((b'T', b"\0\x01x\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0".to_vec())),
        2 => proptest::sample::select(vec!["1", "2", "3", "n", "s", "I"])
            .prop_map(|t| (t.as_bytes()[0], Vec::new())),
        1 => proptest::sample::select(vec![("client_encoding", "LATIN1"), ("TimeZone", "UTC"), ("x", "")])
            .prop_map(|(n, v)| (b'S', [n.as_bytes(), b"\0", v.as_bytes(), b"\0"].concat())),
        1 => Just((b'G', vec![0, 0, 1, 0, 0])),
        1 => Just((b'H', vec![0, 0, 1, 0, 0])),
        1 => Just((b'W', vec![0, 0, 0])),
        1 => proptest::collection::vec(any::<u8>(), 0..10).prop_map(|d| (b'd', d)),
        1 => Just((b'c', Vec::new())),
        1 => Just((b'A', b"\0\0\0\x01ch\0payload\0".to_vec())),
        1 => Just((b'K', vec![0, 0, 0, 1, 0, 0, 0, 2])),
        1 => (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..20)),
    ];
    prop_oneof![
        20 => (structured, wrong_length()).prop_map(|((t, b), w)| framed(t, b, w)),
        3 => proptest::sample::select(vec![
            ("25006", "ERROR"), ("40001", "ERROR"), ("42P01", "ERROR"), ("26000", "ERROR"),
            ("0A000", "ERROR"), ("57P01", "FATAL"), ("01000", "NOTICE"),
        ])
        .prop_map(move |(c, s)| if s == "NOTICE" {
            let mut b = BytesMut::new();
            crate::protocol::encode::notice_response(&mut b, s, c, "n");
            b.freeze()
        } else {
            error(c, s)
        }),
        1 => proptest::collection::vec(any::<u8>(), 1..30).prop_map(Bytes::from),
    ]
}

#[derive(Debug, Clone)]
enum Event {
    Client(Vec<Bytes>),
    /// To the slot held with this index (0 primary, 1 replica), if held.
    Server(usize, Vec<Bytes>),
    /// The same, one byte at a time.
    Trickle(usize, Vec<Bytes>),
    Grant,
    RefuseLease,
    Close(usize),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => proptest::collection::vec(client_message(), 1..4).prop_map(Event::Client),
        6 => (0usize..2, proptest::collection::vec(server_message(), 1..6))
            .prop_map(|(s, m)| Event::Server(s, m)),
        1 => (0usize..2, proptest::collection::vec(server_message(), 1..3))
            .prop_map(|(s, m)| Event::Trickle(s, m)),
        4 => Just(Event::Grant),
        1 => Just(Event::RefuseLease),
        1 => (0usize..2).prop_map(Event::Close),
    ]
}

/// Checks what must hold between any two events: the engine never needs more buffered than
/// the inspect limit, and held-back replica answers stay bounded.
fn check_bounds(h: &Harness) -> Result<(), TestCaseError> {
    for slot in Slot::ALL {
        if let Some(s) = h.engine.server(slot) {
            prop_assert!(s.need <= INSPECT_LIMIT, "needs {} bytes", s.need);
            prop_assert!(s.tentative.len() <= TENTATIVE_LIMIT + INSPECT_LIMIT);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    /// Whatever a client and its servers send, in whatever order and pieces, the engine never
    /// panics, never asks to buffer past its limits, and keeps going or ends with a reason.
    #[test]
    fn engine_survives_hostile_peers(events in proptest::collection::vec(event(), 1..60)) {
        let mut h = Harness::new();
        for e in events {
            if h.engine.ended().is_some() {
                break;
            }
            match e {
                Event::Client(msgs) => {
                    if h.engine.wants_client_input(&h.b, 256 * 1024) {
                        h.client(&msgs);
                    }
                }
                Event::Server(i, msgs) | Event::Trickle(i, msgs) if !h.engine.holds(Slot::ALL[i]) => {
                    drop(msgs);
                }
                Event::Server(i, msgs) => h.server(Slot::ALL[i], &msgs),
                Event::Trickle(i, msgs) => h.server_trickle(Slot::ALL[i], &msgs),
                Event::Grant | Event::RefuseLease => {
                    let acquire = h.pending.iter().find_map(|a| match a {
                        Action::Acquire { slot, .. } => Some(*slot),
                        _ => None,
                    });
                    if let Some(slot) = acquire {
                        if matches!(e, Event::Grant) {
                            h.grant(slot);
                        } else {
                            h.take_acquire(slot);
                            let refusal = ClientError::fatal("08006", "refused");
                            h.run(|en, b, env| en.on_acquire_failed(slot, refusal, b, env));
                        }
                    }
                }
                Event::Close(i) => {
                    if h.engine.holds(Slot::ALL[i]) {
                        h.server_closes(Slot::ALL[i]);
                    }
                }
            }
            h.pending.retain(|a| matches!(a, Action::Acquire { .. }));
            h.sent = Default::default();
            h.b.client_out.clear();
            check_bounds(&h)?;
        }
    }

    /// Fail closed per encoding: SQL that cannot be read in the session's `client_encoding`
    /// is classified a write, whatever the message type that carries it.
    #[test]
    fn unreadable_sql_is_a_write(
        sql in proptest::collection::vec(any::<u8>(), 0..60),
        enc in proptest::sample::select(vec![
            ClientEncoding::Utf8, ClientEncoding::SingleByte, ClientEncoding::Euc,
            ClientEncoding::Johab, ClientEncoding::Sjis, ClientEncoding::DoubleByte,
            ClientEncoding::Gb18030,
        ]),
        simple in any::<bool>(),
    ) {
        let sql: Vec<u8> = sql.into_iter().filter(|&b| b != 0).collect();
        let writes = WriteFunctions::default();
        let learned = LearnedWrites::default();
        let ctx = Ctx { writes: &writes, learned: &learned, max_statements: 10, encoding: enc, user: "app", epoch: 0 };
        let (mut batch, mut statements) = (Batch::default(), Statements::default());
        let mut body = if simple { Vec::new() } else { b"s\0".to_vec() };
        body.extend_from_slice(&sql);
        body.push(0);
        if !simple {
            body.extend_from_slice(&[0, 0]);
        }
        let tag = if simple { b'Q' } else { b'P' };
        let msg = BytesMut::from(&framed(tag, body, None)[..]);
        prop_assert!(add(&mut batch, &mut statements, msg, &ctx).is_ok());
        let class = if simple {
            batch.class.clone()
        } else {
            statements.get("s").map(|d| d.class.clone())
        };
        if enc.readable(&sql).is_none() {
            prop_assert_eq!(class, Some(Class::Write));
        }
    }
}
