//! Pure bookkeeping of a session's client messages: groups them into batches, keeps the
//! client's prepared statements (name → definition) and records per message what it means for
//! a server connection (which statement a Bind uses, what a Parse defines). No I/O.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};

use crate::classify::{classify, Class, ClientEncoding, Hint, PinReason, Setting, WriteFunctions};
use crate::protocol::frame::{self, read_cstr};
use crate::protocol::tag;

pub use super::learned::LearnedWrites;
pub use super::settings::Settings;

/// A statement's definition: its SQL and parameter types. Identical definitions share one
/// proxy-wide name on server connections, whichever session prepared them.
#[derive(Debug)]
pub struct StatementDef {
    /// Identity across the proxy: a 128-bit keyed hash of the Parse body after the name.
    pub key: u128,
    /// The Parse body after the statement name: SQL text, NUL, parameter types.
    pub body: Bytes,
    pub class: Class,
    pub hint: Option<Hint>,
    /// Its `/* pgmeridian:causal_token=… */` hint, applied at each execution.
    pub causal_token: Option<String>,
    /// Its text mentions COPY: running it may put the connection in COPY mode.
    pub copies: bool,
}

impl StatementDef {
    /// What learned writes know the statement by.
    pub fn shape(&self) -> u64 {
        self.key as u64
    }
}

/// The name a statement has on server connections: its key and the schema epoch it was
/// prepared in (after DDL, statements are prepared afresh under new names, since a
/// statement's inferred parameter and result types may have changed with the schema).
pub fn server_name(key: u128, epoch: u64) -> ServerName {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; ServerName::MAX];
    buf[..4].copy_from_slice(b"pgm_");
    for (i, b) in buf[4..36].iter_mut().enumerate() {
        *b = HEX[(key >> (124 - 4 * i)) as usize & 15];
    }
    buf[36] = b'_';
    let digits = (64 - epoch.leading_zeros()).div_ceil(4).max(1) as usize;
    for (i, b) in buf[37..37 + digits].iter_mut().enumerate() {
        *b = HEX[(epoch >> (4 * (digits - 1 - i))) as usize & 15];
    }
    ServerName {
        buf,
        len: 37 + digits,
    }
}

/// A statement's name on server connections (`pgm_` + key in 32 hex digits + `_` + epoch in
/// hex), built on the stack: it is written for every Bind.
#[derive(Clone, Copy)]
pub struct ServerName {
    buf: [u8; ServerName::MAX],
    len: usize,
}

impl ServerName {
    const MAX: usize = 4 + 32 + 1 + 16;

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII was written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// Two process-wide random hash keys: collisions can be neither predicted nor met by chance.
fn key_of(body: &[u8]) -> u128 {
    static STATES: OnceLock<[std::hash::RandomState; 2]> = OnceLock::new();
    let states =
        STATES.get_or_init(|| [std::hash::RandomState::new(), std::hash::RandomState::new()]);
    let half = |s: &std::hash::RandomState| s.hash_one(body);
    (u128::from(half(&states[0])) << 64) | u128::from(half(&states[1]))
}

/// The client's prepared statements by name (`""` is the unnamed one). A Parse defines its
/// name at once (later messages of a pipeline use it); if the server refuses the Parse, the
/// definition is withdrawn again (`undefine`).
#[derive(Debug, Default)]
pub struct Statements {
    /// Named statements, with the number of their definition.
    map: HashMap<String, (Arc<StatementDef>, u64)>,
    /// The unnamed statement (kept apart: drivers define and use it on every execution).
    unnamed: Option<(Arc<StatementDef>, u64)>,
    next_seq: u64,
    /// The classification inputs (`Ctx::epoch`) the unnamed statement was defined under, when
    /// its definition may serve a Parse of the same text again.
    unnamed_epoch: Option<u64>,
    /// Classes of the plain queries sent lately, by shape.
    shapes: Shapes,
}

/// Classes of the plain query texts a session sent lately, by shape (numbers blanked, see
/// `classify::shape`): traffic like pgbench's sends one shape with other numbers each time,
/// and it is classified once.
#[derive(Debug, Default)]
struct Shapes {
    entries: Vec<(Box<[u8]>, crate::classify::Classified)>,
    /// The entry replaced next once full.
    next: usize,
    /// The classification inputs the entries were made under (`Ctx::epoch`).
    epoch: u64,
    scratch: Vec<u8>,
}

impl Shapes {
    const MAX: usize = 8;

    fn classify(&mut self, text: &str, ctx: &Ctx) -> crate::classify::Classified {
        if self.epoch != ctx.epoch {
            self.entries.clear();
            self.next = 0;
            self.epoch = ctx.epoch;
        }
        if !crate::classify::shape::numbers_blanked(text.as_bytes(), &mut self.scratch) {
            return classify(text, ctx.writes);
        }
        if let Some((_, c)) = self.entries.iter().find(|(s, _)| **s == *self.scratch) {
            return c.clone();
        }
        let c = classify(text, ctx.writes);
        if crate::classify::shape::kept_by_shape(&c.class) {
            let entry = (Box::from(self.scratch.as_slice()), c.clone());
            if self.entries.len() < Self::MAX {
                self.entries.push(entry);
            } else {
                self.entries[self.next] = entry;
                self.next = (self.next + 1) % Self::MAX;
            }
        }
        c
    }
}

impl Statements {
    fn entry(&self, name: &str) -> Option<&(Arc<StatementDef>, u64)> {
        if name.is_empty() {
            self.unnamed.as_ref()
        } else {
            self.map.get(name)
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<StatementDef>> {
        self.entry(name).map(|(d, _)| d)
    }

    pub fn len(&self) -> usize {
        self.map.len() + usize::from(self.unnamed.is_some())
    }

    fn define(&mut self, name: &str, def: Arc<StatementDef>) -> u64 {
        self.next_seq += 1;
        if name.is_empty() {
            self.unnamed = Some((def, self.next_seq));
        } else {
            self.map.insert(name.to_owned(), (def, self.next_seq));
        }
        self.next_seq
    }

    /// The unnamed statement's definition, for a new Parse of it with the same body, when
    /// nothing it was classified with has changed: drivers re-parse the same unnamed statement
    /// for every execution (`-M extended`), and its text is classified once.
    fn unnamed_again(&self, body: &[u8], ctx: &Ctx) -> Option<Arc<StatementDef>> {
        if self.unnamed_epoch != Some(ctx.epoch) {
            return None;
        }
        let def = self.get("")?;
        if *def.body != *body {
            return None;
        }
        // Replicas refused this text since: it is classified again (a write now).
        if refused_before(&def.class, || def.shape(), ctx) {
            return None;
        }
        Some(def.clone())
    }

    /// A quiet session keeps no query shapes.
    pub fn forget_shapes(&mut self) {
        self.shapes = Shapes::default();
    }

    /// Withdraws `name` if it still holds the definition numbered `seq`.
    pub fn undefine(&mut self, name: &str, seq: u64) {
        if self.entry(name).is_some_and(|(_, s)| *s == seq) {
            self.remove(name);
        }
    }

    pub fn remove(&mut self, name: &str) -> bool {
        if name.is_empty() {
            self.unnamed.take().is_some()
        } else {
            self.map.remove(name).is_some()
        }
    }

    /// DEALLOCATE ALL / DISCARD ALL: every named statement goes (the unnamed one stays).
    pub fn clear_named(&mut self) {
        self.map.clear();
    }
}

/// Which prepared statement a Bind or a statement Describe uses, as known when it arrived.
#[derive(Debug, Clone)]
pub enum Use {
    Unnamed(Option<Arc<StatementDef>>),
    /// A named statement the session has defined.
    Named(Arc<StatementDef>),
    /// A name the session has not defined (so no server has it under this session's name).
    Unknown(String),
}

/// One client message of a batch, with what it means for the server connection.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Forwarded unchanged: Execute, Sync, Flush, Query, FunctionCall, portal Describe/Close.
    Raw(Bytes),
    /// Parse of the unnamed statement (forwarded unchanged).
    ParseUnnamed { raw: Bytes, def: Arc<StatementDef> },
    /// Parse of a named statement: sent under the proxy-wide name unless the server has it.
    Parse {
        name: String,
        def: Arc<StatementDef>,
        seq: u64,
    },
    /// Parse of a name the session already defined: PostgreSQL refuses it (42P05).
    ParseDuplicate { name: String },
    /// Bind or Describe of a statement; `at` is the statement name's byte range in `raw`.
    Uses {
        raw: Bytes,
        at: Range<usize>,
        stmt: Use,
    },
    /// Close of a statement: answered by the proxy (server statements are shared).
    CloseStatement,
}

/// Client messages up to a Sync, Query, FunctionCall or Flush, and what they amount to.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub msgs: Vec<Msg>,
    /// A statement it runs may be a COPY: nothing of the proxy's may follow it in the same
    /// write (the server would take it for COPY data).
    pub copies: bool,
    /// Bytes of client messages in the batch.
    pub len: usize,
    /// Combined class of everything the batch executes (Empty if it only prepares/describes).
    pub class: Option<Class>,
    pub hint: Option<Hint>,
    /// Ends with a message answered by ReadyForQuery.
    pub completes: bool,
    /// Contains a simple Query (which drops the backend's unnamed statement).
    pub simple_query: bool,
    /// A session setting the batch executes, and the SQL to replay it elsewhere.
    pub setting: Option<Box<(Setting, Arc<str>)>>,
    /// `DEALLOCATE` run by a simple query: `Some(None)` for ALL, `Some(Some(name))` for one.
    pub deallocate: Option<Option<String>>,
    /// An extended-protocol batch (its Sync is ignored if it starts a COPY FROM).
    pub extended: bool,
    /// Only Sync/Flush/Close-statement messages: nothing that runs or prepares anything.
    pub inert: bool,
    /// A `/* pgmeridian:causal_token=… */` hint on a statement the batch runs.
    pub causal_token: Option<String>,
}

/// Classifies `sql`, read in the session's client encoding, overriding a read with Write when
/// replicas have refused this text (`shape`, computed only when something was learned) before.
/// Text that is not valid in its encoding cannot be read, so it is a write (fail closed).
/// Also says whether the class came from that override.
fn classify_learned(
    sql: &[u8],
    shape: impl FnOnce() -> u64,
    ctx: &Ctx,
    shapes: Option<&mut Shapes>,
) -> (crate::classify::Classified, bool) {
    let Some(text) = ctx.encoding.readable(sql) else {
        let unreadable = crate::classify::Classified {
            class: Class::Write,
            hint: None,
            causal_token: None,
            // Unreadable: it may be anything.
            copies: true,
        };
        return (unreadable, false);
    };
    let mut c = match shapes {
        Some(shapes) => shapes.classify(&text, ctx),
        None => classify(&text, ctx.writes),
    };
    if matches!(text, Cow::Owned(_)) && matches!(c.class, Class::Session(_)) {
        // Settings are replayed as UTF-8 text; this one stays on its server connection.
        c.class = Class::Pin(PinReason::EncodedSetting);
    }
    let overridden = refused_before(&c.class, shape, ctx);
    if overridden {
        c.class = Class::Write;
    }
    (c, overridden)
}

/// A statement of this class that replicas have refused before (by its `shape`, computed only
/// when something was learned): a write from now on.
fn refused_before(class: &Class, shape: impl FnOnce() -> u64, ctx: &Ctx) -> bool {
    matches!(class, Class::Read | Class::Empty | Class::Begin { .. })
        && !ctx.learned.is_empty()
        && ctx.learned.contains(ctx.user, shape())
}

/// The shapes (learned-write identities) of what a batch executes.
pub fn shapes(batch: &Batch) -> Vec<u64> {
    batch
        .msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Raw(raw) if raw[0] == tag::QUERY => {
                read_cstr(frame::body(raw)).map(|(sql, _)| hash_of(sql))
            }
            Msg::Uses {
                stmt: Use::Named(d) | Use::Unnamed(Some(d)),
                raw,
                ..
            } if raw[0] == tag::BIND => Some(d.shape()),
            _ => None,
        })
        .collect()
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
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
        (Class::Empty, other) => other.clone(),
        (other, Class::Empty) => other,
        // The proxy answers its own statements only alone in their batch: beside anything
        // else, the batch goes to the primary as it is (the server runs everything in it).
        (a, b) if a.is_for_the_proxy() || b.is_for_the_proxy() => Class::Unknown,
        (Class::Read, other) => other.clone(),
        (other, Class::Read) => other,
        _ => Class::Write,
    }
}

pub fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
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

/// The session's context for reading client messages.
pub struct Ctx<'a> {
    pub writes: &'a WriteFunctions,
    pub learned: &'a LearnedWrites,
    /// Most named statements a session may keep.
    pub max_statements: usize,
    /// How the client's SQL bytes form characters (its `client_encoding`).
    pub encoding: ClientEncoding,
    /// Whose learned writes apply.
    pub user: &'a str,
    /// Changes whenever `writes` or `encoding` may have: a definition classified under
    /// another epoch is not reused.
    pub epoch: u64,
}

/// Adds one extended-protocol or Query/FunctionCall message to `batch`, updating `statements`.
/// Returns an error text for malformed messages (the caller ends the session with 08P01).
pub fn add(
    batch: &mut Batch,
    statements: &mut Statements,
    msg: BytesMut,
    ctx: &Ctx,
) -> Result<Step, String> {
    let msg = msg.freeze();
    let body = frame::body(&msg);
    let starts_empty = batch.msgs.is_empty();
    let mut inert = false;
    let (step, m) = match msg[0] {
        tag::QUERY => {
            let (sql, _) = read_cstr(body).ok_or("malformed Query message")?;
            let (c, _) = classify_learned(sql, || hash_of(sql), ctx, Some(&mut statements.shapes));
            if c.causal_token.is_some() {
                batch.causal_token = c.causal_token.clone();
            }
            batch.copies |= c.copies;
            if sql.first().is_some_and(|c| c.eq_ignore_ascii_case(&b'd')) {
                batch.deallocate = std::str::from_utf8(sql).ok().and_then(deallocation);
            }
            if let Class::Session(s) = &c.class {
                if let Ok(text) = std::str::from_utf8(sql) {
                    batch.setting = Some(Box::new((s.clone(), Arc::from(text))));
                }
            }
            batch.add_class(&c.class, c.hint);
            batch.simple_query = true;
            batch.completes = true;
            (Step::Send, Msg::Raw(msg.clone()))
        }
        tag::FUNCTION_CALL => {
            batch.add_class(&Class::Write, None);
            batch.completes = true;
            (Step::Send, Msg::Raw(msg.clone()))
        }
        tag::PARSE => {
            let (name, rest) = read_cstr(body).ok_or("malformed Parse message")?;
            let (sql, _) = read_cstr(rest).ok_or("malformed Parse message")?;
            let again = if name.is_empty() {
                statements.unnamed_again(rest, ctx)
            } else {
                None
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let def = match again {
                Some(def) => def,
                None => {
                    let key = key_of(rest);
                    let (c, learned) = classify_learned(sql, || key as u64, ctx, None);
                    // A class learned from replicas' refusals is not reused: those age out.
                    if name.is_empty() {
                        statements.unnamed_epoch = (!learned).then_some(ctx.epoch);
                    }
                    Arc::new(StatementDef {
                        key,
                        body: msg.slice_ref(rest),
                        class: c.class,
                        hint: c.hint,
                        copies: c.copies,
                        causal_token: c.causal_token,
                    })
                }
            };
            batch.extended = true;
            batch.add_class(&Class::Empty, None);
            let m = if name.is_empty() {
                statements.define("", def.clone());
                Msg::ParseUnnamed {
                    raw: msg.clone(),
                    def,
                }
            } else if statements.get(&name).is_some() {
                Msg::ParseDuplicate { name }
            } else if statements.len() >= ctx.max_statements {
                return Err(format!(
                    "too many prepared statements in one session (limit {})",
                    ctx.max_statements
                ));
            } else {
                let seq = statements.define(&name, def.clone());
                Msg::Parse { name, def, seq }
            };
            (Step::Continue, m)
        }
        tag::BIND => {
            batch.extended = true;
            let (_portal, rest) = read_cstr(body).ok_or("malformed Bind message")?;
            let (stmt, _) = read_cstr(rest).ok_or("malformed Bind message")?;
            let stmt_use = use_of(statements, stmt);
            match &stmt_use {
                Use::Unnamed(Some(d)) | Use::Named(d) => {
                    batch.copies |= d.copies;
                    if d.causal_token.is_some() {
                        batch.causal_token = d.causal_token.clone();
                    }
                    if let Class::Session(setting) = &d.class {
                        if let Ok(text) = std::str::from_utf8(sql_of(&d.body)) {
                            batch.setting = Some(Box::new((setting.clone(), Arc::from(text))));
                        }
                    }
                    batch.add_class(&d.class, d.hint);
                }
                // Unknown to us: the server (or the proxy) answers with the error.
                _ => batch.add_class(&Class::Unknown, None),
            }
            let at = range_in(&msg, stmt);
            (
                Step::Continue,
                Msg::Uses {
                    raw: msg.clone(),
                    at,
                    stmt: stmt_use,
                },
            )
        }
        tag::DESCRIBE => {
            batch.add_class(&Class::Empty, None);
            match body.split_first() {
                Some((&b'S', rest)) => {
                    let (name, _) = read_cstr(rest).ok_or("malformed Describe message")?;
                    let at = range_in(&msg, name);
                    let stmt = use_of(statements, name);
                    (
                        Step::Continue,
                        Msg::Uses {
                            raw: msg.clone(),
                            at,
                            stmt,
                        },
                    )
                }
                Some((&b'P', _)) => (Step::Continue, Msg::Raw(msg.clone())),
                _ => return Err("malformed Describe message".into()),
            }
        }
        tag::CLOSE => {
            batch.add_class(&Class::Empty, None);
            match body.split_first() {
                Some((&b'S', rest)) => {
                    let (name, _) = read_cstr(rest).ok_or("malformed Close message")?;
                    statements.remove(&String::from_utf8_lossy(name));
                    inert = true;
                    (Step::Continue, Msg::CloseStatement)
                }
                Some((&b'P', _)) => (Step::Continue, Msg::Raw(msg.clone())),
                _ => return Err("malformed Close message".into()),
            }
        }
        tag::EXECUTE => (Step::Continue, Msg::Raw(msg.clone())),
        tag::FLUSH => {
            inert = true;
            (Step::Send, Msg::Raw(msg.clone()))
        }
        tag::SYNC => {
            inert = true;
            batch.completes = true;
            batch.extended = true;
            (Step::Send, Msg::Raw(msg.clone()))
        }
        other => return Err(format!("invalid frontend message type {other}")),
    };
    batch.inert = inert && (starts_empty || batch.inert);
    batch.len += msg.len();
    batch.msgs.push(m);
    Ok(step)
}

fn use_of(statements: &Statements, name: &[u8]) -> Use {
    if name.is_empty() {
        return Use::Unnamed(statements.get("").cloned());
    }
    let name = String::from_utf8_lossy(name);
    match statements.get(&name) {
        Some(def) => Use::Named(def.clone()),
        None => Use::Unknown(name.into_owned()),
    }
}

/// The byte range of `part` (a subslice of `whole`) within `whole`.
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// The SQL text of a Parse body after the name.
pub fn sql_of(body: &[u8]) -> &[u8] {
    read_cstr(body).map_or(body, |(sql, _)| sql)
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
    if words.next().is_some_and(|w| w != ";") {
        return None;
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

#[cfg(test)]
mod tests;
