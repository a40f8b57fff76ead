//! Owns SQL classification for read/write routing (types, `classify`, multi-statement combining); pure: no I/O, clocks or randomness.

pub mod encoding;
mod lexer;
mod rules;
pub mod shape;
#[cfg(test)]
mod tests;

pub use encoding::ClientEncoding;
use lexer::{Item, Kind, Lexer};
use std::sync::Arc;

/// What calling a function means for routing: the built-in lists, the configured
/// `routing.write_functions` / `routing.read_functions`, and the cluster's catalog of volatile
/// functions once loaded (a call of a volatile function is a write unless allow-listed).
#[derive(Debug, Clone, Default)]
pub struct WriteFunctions {
    /// User-configured write functions; the built-ins (in `rules`) are always included.
    extra: Vec<UserFunction>,
    /// User-configured volatile functions that are safe on a replica.
    reads: Vec<UserFunction>,
    /// Names of the cluster's volatile functions (lowercase), from its catalog.
    volatile: Option<Arc<VolatileFunctions>>,
}

/// The lowercase names of a database's volatile functions (`pg_proc.provolatile = 'v'`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct VolatileFunctions {
    names: std::collections::HashSet<Box<[u8]>>,
}

impl VolatileFunctions {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(names: I) -> VolatileFunctions {
        VolatileFunctions {
            names: names
                .into_iter()
                .map(|n| {
                    n.as_ref()
                        .to_ascii_lowercase()
                        .into_bytes()
                        .into_boxed_slice()
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn contains(&self, lowercase: &[u8]) -> bool {
        self.names.contains(lowercase)
    }
}

#[derive(Debug, Clone)]
struct UserFunction {
    schema: Option<String>,
    name: String,
}

impl UserFunction {
    /// A schema-qualified configured name also matches an unqualified call (the search path
    /// may resolve to it).
    fn matches(&self, schema: Option<&[u8]>, name: &[u8]) -> bool {
        self.name.as_bytes().eq_ignore_ascii_case(name)
            && match (&self.schema, schema) {
                (Some(want), Some(got)) => want.as_bytes().eq_ignore_ascii_case(got),
                _ => true,
            }
    }
}

/// "name" or "schema.name", any case, as configured.
fn user_functions<I, S>(names: I) -> Vec<UserFunction>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let clean = |s: &str| s.trim().trim_matches('"').to_ascii_lowercase();
    names
        .into_iter()
        .filter_map(|s| {
            let s = s.as_ref().trim();
            let (schema, name) = match s.rsplit_once('.') {
                Some((schema, name)) => (Some(clean(schema)), clean(name)),
                None => (None, clean(s)),
            };
            let schema = schema.filter(|s| !s.is_empty());
            (!name.is_empty()).then_some(UserFunction { schema, name })
        })
        .collect()
}

impl WriteFunctions {
    /// Built-ins plus `extra` (config `routing.write_functions`): "name" or "schema.name", any case.
    pub fn new<I, S>(extra: I) -> WriteFunctions
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        WriteFunctions {
            extra: user_functions(extra),
            ..WriteFunctions::default()
        }
    }

    /// These, with `reads` (config `routing.read_functions`) allowed on replicas although
    /// volatile.
    pub fn with_reads<I, S>(mut self, reads: I) -> WriteFunctions
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.reads = user_functions(reads);
        self
    }

    /// These, with a call of any of `volatile` (but the allow-listed) counted as a write.
    pub fn with_catalog(&self, volatile: Arc<VolatileFunctions>) -> WriteFunctions {
        WriteFunctions {
            volatile: Some(volatile),
            ..self.clone()
        }
    }

    /// The catalog these were built with, if any.
    pub fn catalog(&self) -> Option<&Arc<VolatileFunctions>> {
        self.volatile.as_ref()
    }

    /// What calling `schema.name(...)` does, if it is a known write function. Built-ins
    /// match in any schema.
    fn lookup(&self, schema: Option<&[u8]>, name: &[u8]) -> Option<rules::Effect> {
        let name = as_postgresql_names_it(name);
        if let Some(effect) = rules::builtin_effect(name) {
            return Some(effect);
        }
        if self.extra.iter().any(|f| f.matches(schema, name)) {
            return Some(rules::Effect::Write);
        }
        let volatile = self.volatile.as_ref()?;
        let mut buf = [0u8; 64];
        let lower = rules::lower(name, &mut buf)?;
        let write = volatile.contains(lower)
            && !rules::is_safe_volatile(lower)
            && !self.reads.iter().any(|f| f.matches(schema, name));
        write.then_some(rules::Effect::Write)
    }
}

/// PostgreSQL's identifier limit (NAMEDATALEN - 1): a longer name is cut to it.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// `name` as PostgreSQL resolves it: cut to [`MAX_IDENTIFIER_BYTES`] at a character boundary,
/// so `f` followed by junk past the limit is still a call of the function `f` names.
fn as_postgresql_names_it(name: &[u8]) -> &[u8] {
    if name.len() <= MAX_IDENTIFIER_BYTES {
        return name;
    }
    let mut end = MAX_IDENTIFIER_BYTES;
    while end > 0 && name[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    &name[..end]
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// Nothing to run: empty string, only comments / semicolons.
    Empty,
    /// Provably read-only; may run on a replica.
    Read,
    /// Writes data or has effects a replica cannot perform.
    Write,
    /// Not recognised. Routed like Write.
    Unknown,
    /// BEGIN / START TRANSACTION; `read_only` is Some(true) for READ ONLY, Some(false) for READ WRITE, None when unspecified.
    Begin { read_only: Option<bool> },
    /// COMMIT, END, ROLLBACK, ABORT (also with AND \[NO\] CHAIN). NOT `ROLLBACK TO [SAVEPOINT]`, NOT COMMIT/ROLLBACK PREPARED.
    End,
    /// SET TRANSACTION ...; read_only as for Begin.
    SetTransaction { read_only: Option<bool> },
    /// A session-level setting change that the proxy will replay on other backends.
    Session(Setting),
    /// A session feature that cannot move between backends: the session stays on the primary for life.
    Pin(PinReason),
    /// `SET pgmeridian.route = primary|replica|auto` (also `TO`, quoted values, any case).
    RouteHint(Hint),
    /// `SET pgmeridian.causal_token = '…'` (the token text), or `RESET pgmeridian.causal_token`.
    CausalToken(Option<String>),
    /// `SHOW pgmeridian.causal_token`.
    ShowCausalToken,
}

impl Class {
    /// A statement the proxy answers itself (route hint, causal token), never a server.
    pub fn is_for_the_proxy(&self) -> bool {
        matches!(
            self,
            Class::RouteHint(_) | Class::CausalToken(_) | Class::ShowCausalToken
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    /// `name` lowercase canonical; `value` the trimmed raw text after TO / = (e.g. "'UTC'", "public, app", "on", "default").
    Set {
        name: String,
        value: String,
    },
    Reset {
        name: String,
    },
    ResetAll,
    /// DISCARD ALL.
    DiscardAll,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinReason {
    TempTable,
    Listen,
    AdvisoryLock,
    WithHoldCursor,
    SetRole,
    SessionAuthorization,
    SqlPrepare,
    SetConfig,
    MultiStatementSet,
    /// A serializable session default: a hot standby refuses serializable transactions.
    Serializable,
    /// A setting written in a client encoding other than UTF-8, which cannot be replayed as text.
    EncodedSetting,
}

impl PinReason {
    /// Stable snake_case name, e.g. for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            PinReason::TempTable => "temp_table",
            PinReason::Listen => "listen",
            PinReason::AdvisoryLock => "advisory_lock",
            PinReason::WithHoldCursor => "with_hold_cursor",
            PinReason::SetRole => "set_role",
            PinReason::SessionAuthorization => "session_authorization",
            PinReason::SqlPrepare => "sql_prepare",
            PinReason::SetConfig => "set_config",
            PinReason::MultiStatementSet => "multi_statement_set",
            PinReason::Serializable => "serializable",
            PinReason::EncodedSetting => "encoded_setting",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
    Auto,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub class: Class,
    /// From a leading comment `/* pgmeridian:primary */` or `/* pgmeridian:replica */` (before the first token; also accept `-- pgmeridian:primary` line comments). Only Primary/Replica here.
    pub hint: Option<Hint>,
    /// From a leading comment `/* pgmeridian:causal_token=… */`: the token text.
    pub causal_token: Option<String>,
    /// A statement is a COPY: running it may put the connection in COPY mode.
    pub copies: bool,
}

/// Classifies `sql` (one or more statements) for routing.
///
/// Splits at top-level `;` (outside quotes, comments, dollar quotes and
/// parentheses), classifies each statement and combines the results. One
/// lexing pass feeds both the splitter and the whole-statement scan; a plain
/// `SELECT` is classified without allocating.
pub fn classify(sql: &str, write_functions: &WriteFunctions) -> Classified {
    let mut hint = None;
    let mut causal_token = None;
    let mut combined = Combiner::default();
    let mut lx = Lexer::new(sql);
    let mut before_first_token = true;
    let mut start = 0;
    let mut has_token = false;
    let mut copies = false;
    // The whole-statement scan runs in this same pass.
    let mut scan = rules::Scan::default();
    while let Some(item) = lx.next_item() {
        let t = match item {
            Item::Comment { body } => {
                if before_first_token {
                    if hint.is_none() {
                        hint = parse_hint(body);
                    }
                    if causal_token.is_none() {
                        causal_token = parse_token_hint(body);
                    }
                }
                continue;
            }
            Item::Token(t) => t,
        };
        before_first_token = false;
        if t.is(Kind::Semicolon) && scan.depth() == 0 {
            if has_token {
                combined.push(rules::classify_stmt(
                    sql,
                    start,
                    t.start,
                    write_functions,
                    &scan,
                ));
            }
            start = t.end;
            has_token = false;
            scan = rules::Scan::default();
            continue;
        }
        if !has_token && t.is_kw("copy") {
            copies = true;
        }
        scan.feed(t, write_functions);
        has_token = true;
    }
    if has_token {
        combined.push(rules::classify_stmt(
            sql,
            start,
            sql.len(),
            write_functions,
            &scan,
        ));
    }
    Classified {
        class: combined.finish(),
        hint,
        causal_token,
        copies,
    }
}

/// `pgmeridian:causal_token=TOKEN` as the whole body of a comment (blanks allowed around
/// `:` and `=`); the token is taken as it is (it is checked where it is used).
fn parse_token_hint(body: &[u8]) -> Option<String> {
    let rest = body.trim_ascii();
    let prefix = b"pgmeridian";
    if !rest.get(..prefix.len())?.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = rest[prefix.len()..].trim_ascii_start().strip_prefix(b":")?;
    let rest = rest.trim_ascii_start();
    let key = b"causal_token";
    if !rest.get(..key.len())?.eq_ignore_ascii_case(key) {
        return None;
    }
    let value = rest[key.len()..]
        .trim_ascii_start()
        .strip_prefix(b"=")?
        .trim_ascii();
    let value = std::str::from_utf8(value).ok()?;
    (!value.is_empty() && !value.contains(char::is_whitespace)).then(|| value.to_owned())
}

/// `pgmeridian:primary` / `pgmeridian:replica` (any case, blanks allowed
/// around the colon) as the whole body of a comment.
fn parse_hint(body: &[u8]) -> Option<Hint> {
    let rest = body.trim_ascii();
    let prefix = b"pgmeridian";
    let head = rest.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = rest.get(prefix.len()..)?.trim_ascii_start();
    let value = rest.strip_prefix(b":")?.trim_ascii();
    if value.eq_ignore_ascii_case(b"primary") {
        Some(Hint::Primary)
    } else if value.eq_ignore_ascii_case(b"replica") {
        Some(Hint::Replica)
    } else {
        None
    }
}

/// Folds the classes of the statements of one query string.
#[derive(Default)]
struct Combiner {
    count: usize,
    first: Option<Class>,
    pin: Option<PinReason>,
    session: bool,
    write: bool,
    unknown: bool,
    transaction: bool,
}

impl Combiner {
    fn push(&mut self, class: Class) {
        match &class {
            Class::Empty => return,
            Class::Read => {}
            Class::Write => self.write = true,
            Class::Unknown => self.unknown = true,
            Class::Begin { .. } | Class::End | Class::SetTransaction { .. } => {
                self.transaction = true
            }
            Class::Session(_)
            | Class::RouteHint(_)
            | Class::CausalToken(_)
            | Class::ShowCausalToken => self.session = true,
            Class::Pin(reason) => {
                self.pin.get_or_insert(*reason);
            }
        }
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(class);
        }
    }

    fn finish(self) -> Class {
        match (self.count, self.first) {
            (0, _) | (_, None) => Class::Empty,
            (1, Some(class)) => class,
            _ => {
                if let Some(reason) = self.pin {
                    Class::Pin(reason)
                } else if self.session {
                    Class::Pin(PinReason::MultiStatementSet)
                } else if self.write {
                    Class::Write
                } else if self.unknown {
                    Class::Unknown
                } else if self.transaction {
                    Class::Write
                } else {
                    Class::Read
                }
            }
        }
    }
}
