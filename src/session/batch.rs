//! Pure bookkeeping of a session's client messages: groups them into batches, remembers the
//! client's prepared statements (name → SQL, class, original Parse bytes) and works out what
//! a batch executes, needs on its backend, and changes. No I/O.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::classify::{classify, Class, Hint, Setting, WriteFunctions};
use crate::protocol::frame::{self, read_cstr};
use crate::protocol::tag;

/// A statement the client prepared with Parse.
#[derive(Debug)]
pub struct Statement {
    pub class: Class,
    pub hint: Option<Hint>,
    /// Hash of the Parse message body (name, SQL, parameter types): identity on a backend.
    pub hash: u64,
    /// Hash of the SQL text alone.
    pub shape: u64,
    /// The client's original Parse message, replayed on backends that lack the statement.
    pub parse: Bytes,
    pub sql: Arc<str>,
}

/// The client's prepared statements; `""` is the unnamed one.
#[derive(Debug, Default)]
pub struct Statements {
    map: HashMap<String, Arc<Statement>>,
}

impl Statements {
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.map.get(name)
    }
}

/// Client messages up to a Sync, Query, FunctionCall or Flush, and what they amount to.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub bytes: BytesMut,
    /// Combined class of everything the batch executes (Empty if it only prepares/describes).
    pub class: Option<Class>,
    pub hint: Option<Hint>,
    /// Ends with a message answered by ReadyForQuery.
    pub completes: bool,
    /// Statements the batch uses that it does not Parse itself: the backend must have them.
    pub uses: Vec<String>,
    /// Statements (re)defined by the batch, with their Parse hash.
    pub parses: Vec<(String, u64)>,
    pub closes: Vec<String>,
    /// Contains a simple Query (which drops the backend's unnamed statement).
    pub simple_query: bool,
    /// A session setting the batch executes, and the SQL to replay it elsewhere.
    pub setting: Option<(Setting, Arc<str>)>,
    /// Hashes of the SQL texts the batch executes (to learn them as writes).
    pub shapes: Vec<u64>,
    /// Combined class of the statements the batch Parses: decides where a batch that goes out
    /// before its Sync (after Flush) must run, since its Bind/Execute follow it there.
    pub parse_class: Option<Class>,
    /// Statement definitions and removals in message order: (name, Some(hash)) for Parse,
    /// (name, None) for Close.
    pub statement_ops: Vec<(String, Option<u64>)>,
    /// `DEALLOCATE` run by a simple query: `Some(None)` for ALL, `Some(Some(name))` for one.
    pub deallocate: Option<Option<String>>,
    /// Not an extended-protocol batch (a simple Query): its answer ends at ReadyForQuery
    /// even around COPY.
    pub extended: bool,
}

/// SQL texts a replica refused as writes although they classified as reads (a user function
/// that writes, say): later runs of the same text go to the primary. Shared by all sessions.
#[derive(Debug, Default)]
pub struct LearnedWrites {
    set: std::sync::RwLock<std::collections::HashSet<u64>>,
    /// Lock-free fast path: nothing learned yet.
    any: std::sync::atomic::AtomicBool,
}

/// Bound on remembered shapes; past it nothing more is learned (the safety net still works).
const LEARNED_MAX: usize = 10_000;

impl LearnedWrites {
    pub fn contains(&self, shape: u64) -> bool {
        self.any.load(std::sync::atomic::Ordering::Relaxed)
            && self
                .set
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&shape)
    }

    pub fn learn(&self, shape: u64) {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        if set.len() < LEARNED_MAX {
            set.insert(shape);
            self.any.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Classifies `sql`, overriding a read with Write when replicas have refused this text before.
fn classify_learned(
    sql: &str,
    writes: &WriteFunctions,
    learned: &LearnedWrites,
) -> (crate::classify::Classified, u64) {
    let mut c = classify(sql, writes);
    let shape = hash_of(sql.as_bytes());
    if matches!(c.class, Class::Read | Class::Empty | Class::Begin { .. })
        && learned.contains(shape)
    {
        c.class = Class::Write;
    }
    (c, shape)
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn add_class(&mut self, class: &Class, hint: Option<Hint>) {
        self.hint = self.hint.or(hint);
        self.class = Some(match self.class.take() {
            None => class.clone(),
            Some(prev) => combine(prev, class),
        });
    }
}

/// Combines the classes of statements executed in one batch: reads stay reads; one
/// non-read statement decides; several non-read statements are a write (pins win).
pub fn combine(a: Class, b: &Class) -> Class {
    match (a, b) {
        (Class::Pin(p), _) => Class::Pin(p),
        (_, Class::Pin(p)) => Class::Pin(*p),
        (Class::Read | Class::Empty, other) => other.clone(),
        (other, Class::Read | Class::Empty) => other,
        _ => Class::Write,
    }
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// What a client message means for batching.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Part of the batch being built.
    Continue,
    /// The batch is ready to send (`completes` tells whether it awaits ReadyForQuery).
    Send,
}

/// Adds one extended-protocol or Query/FunctionCall message to `batch`, updating `statements`.
/// Returns an error text for malformed messages (the caller ends the session with 08P01).
pub fn add(
    batch: &mut Batch,
    statements: &mut Statements,
    msg: BytesMut,
    writes: &WriteFunctions,
    learned: &LearnedWrites,
) -> Result<Step, String> {
    let body = frame::body(&msg);
    let step = match msg[0] {
        tag::QUERY => {
            let (sql, _) = read_cstr(body).ok_or("malformed Query message")?;
            let sql = std::str::from_utf8(sql).unwrap_or("");
            let (c, shape) = classify_learned(sql, writes, learned);
            batch.shapes.push(shape);
            batch.deallocate = deallocation(sql);
            if let Class::Session(s) = &c.class {
                batch.setting = Some((s.clone(), Arc::from(sql)));
            }
            batch.add_class(&c.class, c.hint);
            batch.simple_query = true;
            batch.completes = true;
            Step::Send
        }
        tag::FUNCTION_CALL => {
            batch.add_class(&Class::Write, None);
            batch.completes = true;
            Step::Send
        }
        tag::PARSE => {
            let (name, rest) = read_cstr(body).ok_or("malformed Parse message")?;
            let (sql, _) = read_cstr(rest).ok_or("malformed Parse message")?;
            let name = String::from_utf8_lossy(name).into_owned();
            let sql: Arc<str> = Arc::from(std::str::from_utf8(sql).unwrap_or(""));
            let (c, shape) = classify_learned(&sql, writes, learned);
            let hash = hash_of(body);
            let stmt = Statement {
                class: c.class,
                hint: c.hint,
                hash,
                shape,
                parse: Bytes::copy_from_slice(&msg),
                sql,
            };
            batch.parses.retain(|(n, _)| *n != name);
            batch.parses.push((name.clone(), hash));
            batch.statement_ops.push((name.clone(), Some(hash)));
            batch.extended = true;
            batch.parse_class = Some(match batch.parse_class.take() {
                None => stmt.class.clone(),
                Some(prev) => combine(prev, &stmt.class),
            });
            statements.map.insert(name, Arc::new(stmt));
            batch.add_class(&Class::Empty, None);
            Step::Continue
        }
        tag::BIND => {
            batch.extended = true;
            let (_portal, rest) = read_cstr(body).ok_or("malformed Bind message")?;
            let (stmt, _) = read_cstr(rest).ok_or("malformed Bind message")?;
            let stmt = String::from_utf8_lossy(stmt).into_owned();
            match statements.map.get(&stmt) {
                Some(s) => {
                    if let Class::Session(setting) = &s.class {
                        batch.setting = Some((setting.clone(), s.sql.clone()));
                    }
                    let (class, hint) = (s.class.clone(), s.hint);
                    batch.shapes.push(s.shape);
                    batch.add_class(&class, hint);
                }
                // Unknown to us: let the primary answer (it will report the error).
                None => batch.add_class(&Class::Unknown, None),
            }
            note_use(batch, stmt);
            Step::Continue
        }
        tag::DESCRIBE => {
            if let Some((&b'S', rest)) = body.split_first() {
                let (name, _) = read_cstr(rest).ok_or("malformed Describe message")?;
                note_use(batch, String::from_utf8_lossy(name).into_owned());
            }
            batch.add_class(&Class::Empty, None);
            Step::Continue
        }
        tag::CLOSE => {
            if let Some((&b'S', rest)) = body.split_first() {
                let (name, _) = read_cstr(rest).ok_or("malformed Close message")?;
                let name = String::from_utf8_lossy(name).into_owned();
                statements.map.remove(&name);
                batch.statement_ops.push((name.clone(), None));
                batch.closes.push(name);
            }
            batch.add_class(&Class::Empty, None);
            Step::Continue
        }
        tag::EXECUTE => Step::Continue,
        tag::FLUSH => Step::Send,
        tag::SYNC => {
            batch.completes = true;
            batch.extended = true;
            Step::Send
        }
        other => return Err(format!("invalid frontend message type {other}")),
    };
    batch.bytes.unsplit(msg);
    Ok(step)
}

/// `DEALLOCATE [PREPARE] {name | ALL}`: which client statement(s) it drops.
fn deallocation(sql: &str) -> Option<Option<String>> {
    let mut words = sql.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let mut next = words.next()?;
    if next.eq_ignore_ascii_case("prepare") {
        next = words.next()?;
    }
    let name = next.trim_end_matches(';');
    if name.eq_ignore_ascii_case("all") {
        Some(None)
    } else if let Some(quoted) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(Some(quoted.to_owned()))
    } else {
        Some(Some(name.to_ascii_lowercase()))
    }
}

impl Statements {
    /// The client dropped statements (DEALLOCATE, DISCARD ALL).
    pub fn drop_named(&mut self, which: &Option<String>) {
        match which {
            None => self.map.clear(),
            Some(name) => {
                self.map.remove(name);
            }
        }
    }
}

fn note_use(batch: &mut Batch, name: String) {
    if !batch.parses.iter().any(|(n, _)| *n == name) && !batch.uses.contains(&name) {
        batch.uses.push(name);
    }
}

/// Session parameters set by the client, replayed (after RESET ALL) on a backend that has not
/// seen them. Later settings of the same name replace earlier ones.
#[derive(Debug, Default)]
pub struct Settings {
    list: Vec<(String, Arc<str>)>,
    /// Bumped on every change; each backend remembers the version it has applied.
    pub version: u64,
}

impl Settings {
    pub fn apply(&mut self, setting: &Setting, sql: &Arc<str>) {
        match setting {
            Setting::Set { name, .. } => {
                self.list.retain(|(n, _)| n != name);
                self.list.push((name.clone(), sql.clone()));
            }
            Setting::Reset { name } => self.list.retain(|(n, _)| n != name),
            Setting::ResetAll | Setting::DiscardAll => self.list.clear(),
        }
        self.version += 1;
    }

    /// One simple-query string that brings a backend to this state.
    pub fn replay_sql(&self) -> String {
        let mut sql = String::from("RESET ALL");
        for (_, s) in &self.list {
            // A newline first: a recorded statement may end in a `--` comment.
            sql.push_str("\n;\n");
            sql.push_str(s.trim().trim_end_matches(';'));
        }
        sql
    }
}

#[cfg(test)]
mod tests {
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

    fn add_(
        b: &mut Batch,
        st: &mut Statements,
        m: BytesMut,
        w: &WriteFunctions,
    ) -> Result<Step, String> {
        add(b, st, m, w, &LearnedWrites::default())
    }

    #[test]
    fn learned_shapes_turn_reads_into_writes() {
        let w = WriteFunctions::default();
        let learned = LearnedWrites::default();
        let q = msg(b'Q', &[b"select my_writer()\0"]);
        let mut b = Batch::default();
        add(&mut b, &mut Statements::default(), q.clone(), &w, &learned).unwrap();
        assert_eq!(b.class, Some(Class::Read));
        learned.learn(b.shapes[0]);
        let mut b = Batch::default();
        add(&mut b, &mut Statements::default(), q, &w, &learned).unwrap();
        assert_eq!(b.class, Some(Class::Write));
        // Extended protocol: the same text prepared is a write too.
        let mut b = Batch::default();
        let mut st = Statements::default();
        add(
            &mut b,
            &mut st,
            parse("", "select my_writer()"),
            &w,
            &learned,
        )
        .unwrap();
        add(&mut b, &mut st, bind(""), &w, &learned).unwrap();
        assert_eq!(b.class, Some(Class::Write));
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
    fn extended_batch_takes_the_class_of_what_it_executes() {
        let w = WriteFunctions::default();
        let mut st = Statements::default();
        let mut b = Batch::default();
        assert_eq!(
            add_(&mut b, &mut st, parse("s1", "select 1"), &w),
            Ok(Step::Continue)
        );
        assert_eq!(add_(&mut b, &mut st, bind("s1"), &w), Ok(Step::Continue));
        assert_eq!(
            add_(&mut b, &mut st, msg(b'E', &[b"\0", &[0, 0, 0, 0]]), &w),
            Ok(Step::Continue)
        );
        assert_eq!(add_(&mut b, &mut st, msg(b'S', &[]), &w), Ok(Step::Send));
        assert_eq!(b.class, Some(Class::Read));
        assert!(b.completes && b.uses.is_empty());
        assert_eq!(b.parses.len(), 1);

        // A later batch that only binds s1 needs it on its backend.
        let mut b2 = Batch::default();
        add_(&mut b2, &mut st, bind("s1"), &w).unwrap();
        add_(&mut b2, &mut st, msg(b'S', &[]), &w).unwrap();
        assert_eq!(b2.uses, vec!["s1".to_owned()]);
        assert_eq!(b2.class, Some(Class::Read));
    }

    #[test]
    fn prepare_only_batches_with_flush_are_neutral() {
        let w = WriteFunctions::default();
        let mut st = Statements::default();
        let mut b = Batch::default();
        add_(&mut b, &mut st, parse("s", "insert into t values (1)"), &w).unwrap();
        add_(&mut b, &mut st, msg(b'D', &[b"S", b"s\0"]), &w).unwrap();
        assert_eq!(add_(&mut b, &mut st, msg(b'H', &[]), &w), Ok(Step::Send));
        assert_eq!(b.class, Some(Class::Empty));
        assert!(!b.completes);
        assert!(
            b.uses.is_empty(),
            "described statement was parsed in the same batch"
        );
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
        ];
        for (a, b, want) in cases {
            assert_eq!(combine(a.clone(), &b), want, "{a:?} + {b:?}");
        }
    }

    #[test]
    fn bind_of_an_unknown_statement_is_routed_as_unknown() {
        let w = WriteFunctions::default();
        let mut st = Statements::default();
        let mut b = Batch::default();
        add_(&mut b, &mut st, bind("nope"), &w).unwrap();
        assert_eq!(b.class, Some(Class::Unknown));
    }

    #[test]
    fn deallocate_statements() {
        let cases = [
            ("DEALLOCATE ALL", Some(None)),
            ("deallocate prepare all;", Some(None)),
            ("DEALLOCATE S1", Some(Some("s1".to_owned()))),
            ("DEALLOCATE \"S1\"", Some(Some("S1".to_owned()))),
            ("select 1", None),
            ("DEALLOCATE", None),
        ];
        for (sql, want) in cases {
            assert_eq!(deallocation(sql), want, "{sql}");
        }
    }

    #[test]
    fn a_flushed_prepare_is_routed_by_what_it_parses() {
        let w = WriteFunctions::default();
        let mut st = Statements::default();
        let mut b = Batch::default();
        add_(&mut b, &mut st, parse("s", "insert into t values ($1)"), &w).unwrap();
        add_(&mut b, &mut st, msg(b'D', &[b"S", b"s\0"]), &w).unwrap();
        add_(&mut b, &mut st, msg(b'H', &[]), &w).unwrap();
        assert_eq!(b.class, Some(Class::Empty));
        assert_eq!(b.parse_class, Some(Class::Write));
        assert_eq!(b.statement_ops, vec![("s".to_owned(), Some(b.parses[0].1))]);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let w = WriteFunctions::default();
        let mut st = Statements::default();
        for m in [
            msg(b'P', &[b"noterm"]),
            msg(b'B', &[b"\0"]),
            msg(b'Q', &[b"x"]),
            msg(b'Z', &[]),
        ] {
            assert!(add_(&mut Batch::default(), &mut st, m, &w).is_err());
        }
    }

    #[test]
    fn settings_replay_in_order_with_replacement() {
        let mut s = Settings::default();
        let set = |n: &str| Setting::Set {
            name: n.into(),
            value: "x".into(),
        };
        s.apply(&set("search_path"), &Arc::from("SET search_path = a"));
        s.apply(&set("timezone"), &Arc::from("SET TIME ZONE 'UTC';"));
        s.apply(&set("search_path"), &Arc::from("SET search_path = b"));
        assert_eq!(
            s.replay_sql(),
            "RESET ALL\n;\nSET TIME ZONE 'UTC'\n;\nSET search_path = b"
        );
        s.apply(
            &Setting::Reset {
                name: "timezone".into(),
            },
            &Arc::from("RESET timezone"),
        );
        assert_eq!(s.replay_sql(), "RESET ALL\n;\nSET search_path = b");
        s.apply(&Setting::DiscardAll, &Arc::from("DISCARD ALL"));
        assert_eq!(s.replay_sql(), "RESET ALL");
        assert_eq!(s.version, 5);
    }
}
