//! The whole-statement scan: write/pin function calls, locking clauses,
//! data-modifying CTEs and `SELECT ... INTO`. It is fed one token at a time
//! so that `classify` runs it in the same pass that splits statements.

use super::super::lexer::{Kind, Lexer, Token};
use super::super::{Class, PinReason, WriteFunctions};
use super::{lower, Effect};

/// Catalog views whose answer on a hot standby is not the one clients look for: a standby
/// lists none of the cluster's prepared transactions (so psycopg's `ROLLBACK PREPARED` loop
/// reading them there finds nothing); its replication connections and slots are its own; and
/// the sessions a client looks for in `pg_stat_activity` or `pg_locks` (a `pg_sleep` to cancel,
/// a lock holder) run their writes, volatile calls and transactions on the primary. A read of
/// one goes to the primary, as a write does.
const PRIMARY_STATE: [&[u8]; 5] = [
    b"pg_prepared_xacts",
    b"pg_stat_activity",
    b"pg_locks",
    b"pg_stat_replication",
    b"pg_replication_slots",
];

/// Whether `t`, qualified by `qualifier`, names one of [`PRIMARY_STATE`].
fn is_primary_state(t: &Token<'_>, qualifier: Option<&[u8]>) -> bool {
    let Some(name) = t.name() else {
        return false;
    };
    if !(8..=20).contains(&name.len()) || !name[..3].eq_ignore_ascii_case(b"pg_") {
        return false;
    }
    if qualifier.is_some_and(|q| !q.eq_ignore_ascii_case(b"pg_catalog")) {
        return false;
    }
    let mut buf = [0u8; 20];
    let name = if t.kind == Kind::Ident {
        match lower(name, &mut buf) {
            Some(n) => n,
            None => return false,
        }
    } else {
        name
    };
    PRIMARY_STATE.contains(&name)
}

/// How a scan result is read.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// SELECT / VALUES / TABLE / parenthesised query.
    Query,
    /// WITH: DML at top level is the main statement.
    With,
    /// A statement already known to write: only pinning matters.
    Pins,
}

/// The keywords the scan reacts to.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum Kw {
    #[default]
    Other,
    For,
    Update,
    Share,
    Key,
    No,
    Insert,
    Delete,
    Merge,
    Into,
    Temp,
    Local,
    Global,
}

impl Kw {
    fn of(t: &Token<'_>) -> Kw {
        if t.kind != Kind::Ident {
            return Kw::Other;
        }
        let mut buf = [0u8; 9];
        match lower(t.text, &mut buf) {
            Some(b"for") => Kw::For,
            Some(b"update") => Kw::Update,
            Some(b"share") => Kw::Share,
            Some(b"key") => Kw::Key,
            Some(b"no") => Kw::No,
            Some(b"insert") => Kw::Insert,
            Some(b"delete") => Kw::Delete,
            Some(b"merge") => Kw::Merge,
            Some(b"into") => Kw::Into,
            Some(b"temp" | b"temporary") => Kw::Temp,
            Some(b"local") => Kw::Local,
            Some(b"global") => Kw::Global,
            _ => Kw::Other,
        }
    }

    fn is_dml(self) -> bool {
        matches!(self, Kw::Insert | Kw::Update | Kw::Delete | Kw::Merge)
    }
}

/// Scan state over the tokens of one statement.
#[derive(Default)]
pub(crate) struct Scan<'a> {
    depth: usize,
    /// The previous token and the keyword ids of the last three.
    p1: Option<Token<'a>>,
    kws: [Kw; 3],
    /// Name before the latest `.` (a schema or table qualifier).
    before_dot: Option<&'a [u8]>,
    /// Qualifier of `p1` when it is `qualifier.p1`.
    qualifier: Option<&'a [u8]>,
    /// Write function call, locking clause, `INTO`, DML right after `(`.
    write: bool,
    /// DML keyword outside parentheses (WITH's main statement).
    top_dml: bool,
    /// The first pinning feature seen.
    pin: Option<PinReason>,
}

impl<'a> Scan<'a> {
    /// Parenthesis depth after the tokens fed so far.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    pub(crate) fn feed(&mut self, t: Token<'a>, wf: &WriteFunctions) {
        let kw = Kw::of(&t);
        let p1 = self.p1;
        let [k1, k2, k3] = self.kws;
        match t.kind {
            Kind::LParen => {
                let call = p1.and_then(|name| wf.lookup(self.qualifier, name.name()?));
                match call {
                    Some(Effect::Pin(reason)) => {
                        self.pin.get_or_insert(reason);
                    }
                    Some(Effect::Write) => self.write = true,
                    None => {}
                }
                self.depth += 1;
            }
            Kind::RParen => self.depth = self.depth.saturating_sub(1),
            _ => match kw {
                Kw::Other => {}
                // FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE
                Kw::Update | Kw::Share
                    if k1 == Kw::For
                        || (k1 == Kw::Key && kw == Kw::Share && k2 == Kw::For)
                        || (k1 == Kw::Key && kw == Kw::Update && k2 == Kw::No && k3 == Kw::For) =>
                {
                    self.write = true
                }
                Kw::Into => self.write = true,
                // `SELECT ... INTO [LOCAL|GLOBAL] TEMP`, not `INSERT INTO temp`.
                Kw::Temp
                    if (k1 == Kw::Into && !k2.is_dml())
                        || (matches!(k1, Kw::Local | Kw::Global)
                            && k2 == Kw::Into
                            && !k3.is_dml()) =>
                {
                    self.pin.get_or_insert(PinReason::TempTable);
                }
                _ => {}
            },
        }
        // A data-modifying CTE body, or the main statement of a WITH.
        if kw.is_dml() {
            if p1.is_some_and(|p| p.is(Kind::LParen)) {
                self.write = true;
            } else if self.depth == 0 {
                self.top_dml = true;
            }
        }
        let after_dot = p1.is_some_and(|p| p.is(Kind::Dot));
        self.qualifier = if after_dot { self.before_dot } else { None };
        if !self.write && is_primary_state(&t, self.qualifier) {
            self.write = true;
        }
        if t.is(Kind::Dot) {
            self.before_dot = p1.and_then(|p| p.name());
        }
        self.p1 = Some(t);
        self.kws = [kw, k1, k2];
    }

    /// The statement's class when read in `mode`.
    pub(super) fn class(&self, mode: Mode) -> Class {
        if let Some(reason) = self.pin {
            Class::Pin(reason)
        } else if self.write || mode == Mode::Pins || (mode == Mode::With && self.top_dml) {
            Class::Write
        } else {
            Class::Read
        }
    }
}

/// Scans all of `lx` (for inner statements of EXPLAIN / COPY / DECLARE).
pub(super) fn scan(lx: Lexer<'_>, wf: &WriteFunctions, mode: Mode) -> Class {
    let mut scan = Scan::default();
    for t in lx {
        scan.feed(t, wf);
    }
    scan.class(mode)
}
