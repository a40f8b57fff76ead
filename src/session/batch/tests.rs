use super::*;
use bytes::BufMut;

fn msg(tag: u8, parts: &[&[u8]]) -> BytesMut {
    let body: Vec<u8> = parts.concat();
    let mut m = BytesMut::new();
    m.put_u8(tag);
    m.put_u32((body.len() + 4) as u32);
    m.put_slice(&body);
    m
}

fn ctx<'a>(w: &'a WriteFunctions, learned: &'a LearnedWrites) -> Ctx<'a> {
    Ctx {
        writes: w,
        learned,
        max_statements: 100,
        encoding: ClientEncoding::Utf8,
        user: "app",
        epoch: 0,
    }
}

fn add_(b: &mut Batch, st: &mut Statements, m: BytesMut) -> Result<Step, String> {
    let w = WriteFunctions::default();
    let l = LearnedWrites::default();
    add(b, st, m, &ctx(&w, &l))
}

fn parse(name: &str, sql: &str) -> BytesMut {
    msg(
        b'P',
        &[name.as_bytes(), b"\0", sql.as_bytes(), b"\0", &[0, 0]],
    )
}

fn bind(stmt: &str) -> BytesMut {
    msg(b'B', &[b"\0", stmt.as_bytes(), b"\0", &[0, 0, 0, 0, 0, 0]])
}

#[test]
fn learned_shapes_turn_reads_into_writes() {
    let w = WriteFunctions::default();
    let learned = LearnedWrites::default();
    let q = msg(b'Q', &[b"select my_writer()\0"]);
    let mut b = Batch::default();
    add(
        &mut b,
        &mut Statements::default(),
        q.clone(),
        &ctx(&w, &learned),
    )
    .unwrap();
    assert_eq!(b.class, Some(Class::Read));
    learned.learn("app", shapes(&b)[0]);
    let mut b = Batch::default();
    add(&mut b, &mut Statements::default(), q, &ctx(&w, &learned)).unwrap();
    assert_eq!(b.class, Some(Class::Write));
    // Extended protocol: a prepared statement refused once is a write from then on.
    let mut b = Batch::default();
    let mut st = Statements::default();
    let c = ctx(&w, &learned);
    add(&mut b, &mut st, parse("", "select my_writer()"), &c).unwrap();
    add(&mut b, &mut st, bind(""), &c).unwrap();
    assert_eq!(b.class, Some(Class::Read));
    learned.learn("app", shapes(&b)[0]);
    let mut b = Batch::default();
    add(&mut b, &mut st, parse("", "select my_writer()"), &c).unwrap();
    add(&mut b, &mut st, bind(""), &c).unwrap();
    assert_eq!(b.class, Some(Class::Write));
    // Another user's sessions still read it from replicas.
    let other = Ctx {
        user: "other",
        ..ctx(&w, &learned)
    };
    let mut b = Batch::default();
    add(
        &mut b,
        &mut Statements::default(),
        msg(b'Q', &[b"select my_writer()\0"]),
        &other,
    )
    .unwrap();
    assert_eq!(b.class, Some(Class::Read));
}

#[test]
fn sql_that_is_not_utf8_is_a_write() {
    let mut b = Batch::default();
    let q = msg(b'Q', &[b"INSERT INTO t VALUES ('caf\xe9')\0"]);
    add_(&mut b, &mut Statements::default(), q).unwrap();
    assert_eq!(b.class, Some(Class::Write));
    let mut b = Batch::default();
    let q = msg(b'Q', &[b"select '\xe9'\0"]);
    add_(&mut b, &mut Statements::default(), q).unwrap();
    assert_eq!(b.class, Some(Class::Write), "fail closed, even for a read");
}

#[test]
fn extended_batch_takes_the_class_of_what_it_executes() {
    let mut st = Statements::default();
    let mut b = Batch::default();
    assert_eq!(
        add_(&mut b, &mut st, parse("s1", "select 1")),
        Ok(Step::Continue)
    );
    assert_eq!(add_(&mut b, &mut st, bind("s1")), Ok(Step::Continue));
    assert_eq!(
        add_(&mut b, &mut st, msg(b'E', &[b"\0", &[0, 0, 0, 0]])),
        Ok(Step::Continue)
    );
    assert_eq!(add_(&mut b, &mut st, msg(b'S', &[])), Ok(Step::Send));
    assert_eq!(b.class, Some(Class::Read));
    assert!(b.completes && !b.inert);
    let Msg::Uses { raw, at, stmt } = &b.msgs[1] else {
        panic!("{:?}", b.msgs[1])
    };
    assert_eq!(&raw[at.clone()], b"s1");
    assert!(matches!(stmt, Use::Named(_)));

    // A later batch that only binds s1 uses the same definition.
    let mut b2 = Batch::default();
    add_(&mut b2, &mut st, bind("s1")).unwrap();
    add_(&mut b2, &mut st, msg(b'S', &[])).unwrap();
    assert_eq!(b2.class, Some(Class::Read));
}

#[test]
fn identical_definitions_share_a_key_and_names_do_not_matter() {
    let mut st = Statements::default();
    let mut b = Batch::default();
    add_(&mut b, &mut st, parse("a", "select $1")).unwrap();
    add_(&mut b, &mut st, parse("b", "select $1")).unwrap();
    add_(&mut b, &mut st, parse("c", "select $2")).unwrap();
    let (a, bb, c) = (
        st.get("a").unwrap().key,
        st.get("b").unwrap().key,
        st.get("c").unwrap().key,
    );
    assert_eq!(a, bb);
    assert_ne!(a, c);
    assert!(
        server_name(a, u64::MAX).as_bytes().len() < 63,
        "fits NAMEDATALEN"
    );
}

#[test]
fn a_server_name_is_the_key_and_epoch_in_hex() {
    let cases: [(u128, u64); 6] = [
        (0, 0),
        (1, 1),
        (u128::MAX, u64::MAX),
        (0x0123_4567_89ab_cdef_fedc_ba98_7654_3210, 0x10),
        (1 << 127, 0xf),
        (0xdead_beef, 1 << 63),
    ];
    for (key, epoch) in cases {
        let name = server_name(key, epoch);
        assert_eq!(
            name.as_str(),
            format!("pgm_{key:032x}_{epoch:x}"),
            "{key} {epoch}"
        );
        assert_eq!(name.as_bytes(), name.as_str().as_bytes());
    }
}

#[test]
fn a_second_parse_of_a_name_is_a_duplicate_until_closed() {
    let mut st = Statements::default();
    let mut b = Batch::default();
    add_(&mut b, &mut st, parse("s", "select 1")).unwrap();
    add_(&mut b, &mut st, parse("s", "select 2")).unwrap();
    assert!(matches!(b.msgs[1], Msg::ParseDuplicate { .. }));
    add_(&mut b, &mut st, msg(b'C', &[b"S", b"s\0"])).unwrap();
    add_(&mut b, &mut st, parse("s", "select 2")).unwrap();
    assert!(matches!(b.msgs[3], Msg::Parse { .. }));
    // The unnamed statement is redefined freely.
    add_(&mut b, &mut st, parse("", "select 1")).unwrap();
    add_(&mut b, &mut st, parse("", "select 2")).unwrap();
    assert!(matches!(b.msgs[5], Msg::ParseUnnamed { .. }));
}

#[test]
fn a_withdrawn_definition_is_only_removed_if_unchanged() {
    let mut st = Statements::default();
    let mut b = Batch::default();
    add_(&mut b, &mut st, parse("s", "select 1")).unwrap();
    let Msg::Parse { seq, .. } = b.msgs[0].clone() else {
        panic!()
    };
    st.undefine("s", seq + 1);
    assert!(st.get("s").is_some());
    st.undefine("s", seq);
    assert!(st.get("s").is_none());
}

#[test]
fn the_statement_limit_is_a_protocol_error() {
    let w = WriteFunctions::default();
    let l = LearnedWrites::default();
    let c = Ctx {
        writes: &w,
        max_statements: 2,
        ..ctx(&w, &l)
    };
    let mut st = Statements::default();
    let mut b = Batch::default();
    add(&mut b, &mut st, parse("a", "select 1"), &c).unwrap();
    add(&mut b, &mut st, parse("b", "select 1"), &c).unwrap();
    assert!(add(&mut b, &mut st, parse("c", "select 1"), &c).is_err());
}

#[test]
fn prepare_only_batches_with_flush_are_neutral_and_sync_only_is_inert() {
    let mut st = Statements::default();
    let mut b = Batch::default();
    add_(&mut b, &mut st, parse("s", "insert into t values (1)")).unwrap();
    add_(&mut b, &mut st, msg(b'D', &[b"S", b"s\0"])).unwrap();
    assert_eq!(add_(&mut b, &mut st, msg(b'H', &[])), Ok(Step::Send));
    assert_eq!(b.class, Some(Class::Empty));
    assert!(!b.completes && !b.inert);
    let mut s = Batch::default();
    add_(&mut s, &mut st, msg(b'S', &[])).unwrap();
    assert!(s.inert && s.completes);
}

#[test]
fn classes_combine_to_the_strongest() {
    use crate::classify::PinReason;
    let cases = [
        (Class::Read, Class::Read, Class::Read),
        (Class::Empty, Class::Write, Class::Write),
        (Class::Write, Class::Read, Class::Write),
        (Class::Write, Class::Unknown, Class::Write),
        (
            Class::Read,
            Class::Pin(PinReason::Listen),
            Class::Pin(PinReason::Listen),
        ),
        (Class::Begin { read_only: None }, Class::Write, Class::Write),
        // The proxy's own statements: answered by it only alone in their batch.
        (
            Class::Empty,
            Class::RouteHint(crate::classify::Hint::Primary),
            Class::RouteHint(crate::classify::Hint::Primary),
        ),
        (
            Class::Read,
            Class::RouteHint(crate::classify::Hint::Primary),
            Class::Unknown,
        ),
        (Class::ShowCausalToken, Class::Read, Class::Unknown),
        (Class::CausalToken(None), Class::Write, Class::Unknown),
        (
            Class::ShowCausalToken,
            Class::Pin(PinReason::Listen),
            Class::Pin(PinReason::Listen),
        ),
    ];
    for (a, b, want) in cases {
        assert_eq!(combine(a.clone(), &b), want, "{a:?} + {b:?}");
    }
}

#[test]
fn bind_of_an_unknown_statement_is_routed_as_unknown() {
    let mut st = Statements::default();
    let mut b = Batch::default();
    add_(&mut b, &mut st, bind("nope")).unwrap();
    assert_eq!(b.class, Some(Class::Unknown));
    assert!(matches!(
        &b.msgs[0],
        Msg::Uses {
            stmt: Use::Unknown(_),
            ..
        }
    ));
}

#[test]
fn deallocate_statements() {
    let cases = [
        ("DEALLOCATE ALL", Some(None)),
        ("deallocate prepare all;", Some(None)),
        ("DEALLOCATE S1", Some(Some("s1".to_owned()))),
        ("DEALLOCATE \"S1\"", Some(Some("S1".to_owned()))),
        ("DEALLOCATE _pg3_0", Some(Some("_pg3_0".to_owned()))),
        ("DEALLOCATE a; select 1", None),
        ("select 1", None),
        ("DEALLOCATE", None),
    ];
    for (sql, want) in cases {
        assert_eq!(deallocation(sql), want, "{sql}");
    }
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let mut st = Statements::default();
    for m in [
        msg(b'P', &[b"noterm"]),
        msg(b'B', &[b"\0"]),
        msg(b'Q', &[b"x"]),
        msg(b'Z', &[]),
        msg(b'D', &[b"X"]),
        msg(b'C', &[]),
    ] {
        assert!(add_(&mut Batch::default(), &mut st, m).is_err());
    }
}

#[test]
fn sql_is_read_in_the_client_encoding_and_unreadable_sql_is_a_write() {
    use ClientEncoding::*;
    let cases: &[(ClientEncoding, &[u8], Class)] = &[
        (
            SingleByte,
            b"INSERT INTO t VALUES ('caf\xe9')",
            Class::Write,
        ),
        (SingleByte, b"SELECT 'caf\xe9'", Class::Read),
        // Not UTF-8 at all: fail closed.
        (Utf8, b"SELECT 'caf\xe9'", Class::Write),
        (Utf8, "SELECT 'caf\u{e9}'".as_bytes(), Class::Read),
        // In SJIS 0x95 0x5C is one character: the string ends at the next quote and the
        // DELETE is a statement of its own (read byte-wise, `\'` would hide it in the string).
        (Sjis, b"SELECT E'\x95\x5c', 1; DELETE FROM t", Class::Write),
        (Sjis, b"SELECT E'\x95\x5c', 1", Class::Read),
        (Sjis, b"SELECT '\x95", Class::Write),
        (Gb18030, b"SELECT '\x81\x30\x81\x30'", Class::Read),
        // A setting that cannot be replayed as UTF-8 keeps its server connection.
        (
            SingleByte,
            b"SET application_name = 'caf\xe9'",
            Class::Pin(PinReason::EncodedSetting),
        ),
        (
            SingleByte,
            b"SET application_name = 'cafe'",
            Class::Session(Setting::Set {
                name: "application_name".into(),
                value: "'cafe'".into(),
            }),
        ),
    ];
    let w = WriteFunctions::default();
    let l = LearnedWrites::default();
    for (enc, sql, want) in cases {
        let c = Ctx {
            encoding: *enc,
            ..ctx(&w, &l)
        };
        let mut b = Batch::default();
        add(
            &mut b,
            &mut Statements::default(),
            msg(b'Q', &[sql, b"\0"]),
            &c,
        )
        .unwrap();
        assert_eq!(
            b.class.as_ref(),
            Some(want),
            "{enc:?} {:?}",
            String::from_utf8_lossy(sql)
        );
    }
}

/// The definition of the unnamed statement a Parse re-sends (text unchanged, classification
/// inputs unchanged) is the one made before; anything else is classified afresh.
#[test]
fn an_unnamed_statement_parsed_again_is_classified_once() {
    let plain = WriteFunctions::default();
    let writer = WriteFunctions::new(["bump"]);
    let learned = LearnedWrites::default();
    let unnamed_def = |b: &Batch| match &b.msgs[0] {
        Msg::ParseUnnamed { def, .. } => def.clone(),
        other => panic!("not an unnamed Parse: {other:?}"),
    };
    let run = |st: &mut Statements, sql: &str, c: &Ctx| {
        let mut b = Batch::default();
        add(&mut b, st, parse("", sql), c).unwrap();
        add(&mut b, st, bind(""), c).unwrap();
        b
    };
    let mut st = Statements::default();
    let c0 = ctx(&plain, &learned);
    let first = run(&mut st, "select bump()", &c0);
    let again = run(&mut st, "select bump()", &c0);
    assert!(Arc::ptr_eq(&unnamed_def(&first), &unnamed_def(&again)));
    assert_eq!(again.class, Some(Class::Read));
    // Other text: a new definition.
    let other = run(&mut st, "select bump(2)", &c0);
    assert!(!Arc::ptr_eq(&unnamed_def(&again), &unnamed_def(&other)));
    // The write functions changed (a new epoch): classified again, now a write.
    let c1 = Ctx {
        writes: &writer,
        epoch: 1,
        ..ctx(&plain, &learned)
    };
    let fresh = run(&mut st, "select bump(2)", &c1);
    assert!(!Arc::ptr_eq(&unnamed_def(&other), &unnamed_def(&fresh)));
    assert_eq!(fresh.class, Some(Class::Write));
    // A named statement never takes the unnamed one's definition.
    let mut b = Batch::default();
    add(&mut b, &mut st, parse("s1", "select bump(2)"), &c1).unwrap();
    match &b.msgs[0] {
        Msg::Parse { def, .. } => assert!(!Arc::ptr_eq(def, &unnamed_def(&fresh))),
        other => panic!("not a named Parse: {other:?}"),
    }
}
