//! Per-statement classification rules and the built-in write-function lists.
//!
//! Each rule reads the tokens of one statement (no `;` at top level). When a
//! statement is not understood the answer is `Unknown` (routed like a write).

use super::lexer::{Kind, Lexer, Token};
use super::{Class, PinReason, Setting, WriteFunctions};

mod scan;
mod session;

pub(crate) use scan::Scan;
use scan::{scan, Mode};

/// Nesting bound for EXPLAIN / COPY / DECLARE inner statements.
const MAX_DEPTH: u8 = 16;

/// What calling a function does to the routing decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    Write,
    Pin(PinReason),
}

/// Built-in functions that write, assign an xid, signal other backends,
/// or are rejected during recovery (names lowercase).
const WRITE_FUNCTIONS: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "txid_current",
    "pg_current_xact_id",
    "pg_notify",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    "lo_create",
    "lo_creat",
    "lo_import",
    "lo_export",
    "lo_unlink",
    "lo_open",
    "lo_write",
    "lo_put",
    "lo_from_bytea",
    "lo_truncate",
    "lo_truncate64",
    "lowrite",
    "loread",
    "lo_close",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_create_physical_replication_slot",
    "pg_create_logical_replication_slot",
    "pg_drop_replication_slot",
    "pg_promote",
    "pg_start_backup",
    "pg_backup_start",
    "pg_stop_backup",
    "pg_backup_stop",
    // Not in the brief's list; all fail during recovery or write WAL/catalogs.
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_walfile_name",
    "pg_walfile_name_offset",
    "pg_logical_emit_message",
    "pg_log_standby_snapshot",
    "pg_copy_physical_replication_slot",
    "pg_copy_logical_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_logical_slot_peek_changes",
    "pg_logical_slot_peek_binary_changes",
    "pg_import_system_collations",
    "pg_nextoid",
];

/// Name prefixes of built-in write functions.
const WRITE_FUNCTION_PREFIXES: &[&str] = &["pg_stat_reset", "pg_replication_origin_"];

/// Session-level advisory locks: held until unlocked or disconnect.
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
];

/// Volatile built-ins that change nothing a replica cannot serve, common in reads: they keep
/// a read on a replica although the function catalog calls them volatile. `pg_sleep` is not
/// here: a sleep runs on the primary, where the query that cancels it looks for it.
const SAFE_VOLATILE: &[&str] = &[
    "random",
    "random_normal",
    "clock_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuidv4",
    "uuidv7",
    "pg_is_in_recovery",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
    "pg_database_size",
    "pg_relation_size",
    "pg_table_size",
    "pg_indexes_size",
    "pg_total_relation_size",
    "pg_tablespace_size",
];

/// Whether `lowercase` is a volatile built-in allowed on replicas.
pub(crate) fn is_safe_volatile(lowercase: &[u8]) -> bool {
    SAFE_VOLATILE.iter().any(|f| f.as_bytes() == lowercase)
}

const QUERY_START: &[&str] = &["select", "values", "with", "table"];

/// Built-in effect of calling `name` (any case).
pub(crate) fn builtin_effect(name: &[u8]) -> Option<Effect> {
    let mut buf = [0u8; 64];
    let name = lower(name, &mut buf)?;
    let is = |list: &[&str]| list.iter().any(|f| f.as_bytes() == name);
    if name == b"set_config" {
        Some(Effect::Pin(PinReason::SetConfig))
    } else if is(SESSION_LOCK_FUNCTIONS) {
        Some(Effect::Pin(PinReason::AdvisoryLock))
    } else if is(WRITE_FUNCTIONS)
        || WRITE_FUNCTION_PREFIXES
            .iter()
            .any(|p| name.starts_with(p.as_bytes()))
    {
        Some(Effect::Write)
    } else {
        None
    }
}

/// ASCII-lowercases `text` into `buf`; `None` when it does not fit.
pub(crate) fn lower<'b, const N: usize>(text: &[u8], buf: &'b mut [u8; N]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..text.len())?;
    for (o, i) in out.iter_mut().zip(text) {
        *o = i.to_ascii_lowercase();
    }
    Some(out)
}

/// Shared context of one `classify` call.
#[derive(Clone, Copy)]
struct Cx<'a> {
    sql: &'a str,
    wf: &'a WriteFunctions,
    depth: u8,
}

impl Cx<'_> {
    /// Classifies the statement that starts at `lx`'s next token, as run by
    /// an enclosing EXPLAIN ANALYZE / COPY / DECLARE.
    fn inner(&self, lx: &Lexer<'_>) -> Class {
        let start = lx.peek().map_or(lx.end(), |t| t.start);
        executed(stmt(
            self.sql,
            start,
            lx.end(),
            self.wf,
            self.depth + 1,
            None,
        ))
    }
}

/// An executed inner statement must be a query or DML; anything else is odd.
fn executed(class: Class) -> Class {
    match class {
        Class::Read | Class::Write | Class::Pin(_) => class,
        _ => Class::Unknown,
    }
}

/// Classifies `sql[start..end]`, one top-level statement; `pre` is the
/// [`Scan`] of exactly these tokens, made while splitting the string.
pub(crate) fn classify_stmt(
    sql: &str,
    start: usize,
    end: usize,
    wf: &WriteFunctions,
    pre: &Scan<'_>,
) -> Class {
    stmt(sql, start, end, wf, 0, Some(pre))
}

fn stmt(
    sql: &str,
    start: usize,
    end: usize,
    wf: &WriteFunctions,
    depth: u8,
    pre: Option<&Scan<'_>>,
) -> Class {
    if depth > MAX_DEPTH {
        return Class::Unknown;
    }
    let cx = Cx { sql, wf, depth };
    let whole = Lexer::with_range(sql, start, end);
    // Whole-statement scan, reusing the splitter's when there is one.
    let whole_scan = |mode| match pre {
        Some(pre) => pre.class(mode),
        None => scan(whole.clone(), wf, mode),
    };
    let mut lx = whole.clone();
    let Some(first) = lx.next_token() else {
        return Class::Empty;
    };
    if first.is(Kind::LParen) {
        // `(SELECT ...) UNION (SELECT ...)`
        let lead = whole.clone().find(|t| !t.is(Kind::LParen));
        return match lead {
            Some(t) if t.is_any_kw(QUERY_START) => whole_scan(Mode::Query),
            _ => Class::Unknown,
        };
    }
    let mut buf = [0u8; 16];
    let kw = match first.kind {
        Kind::Ident => lower(first.text, &mut buf).unwrap_or_default(),
        _ => &[],
    };
    match kw {
        b"select" | b"values" | b"table" => whole_scan(Mode::Query),
        b"with" => whole_scan(Mode::With),
        b"show" => {
            let shows_token = lx
                .next_token()
                .and_then(|t| session::show_name(t, &mut lx))
                .is_some_and(|n| session::is_causal_token(&n));
            if shows_token && lx.next_token().is_none() {
                Class::ShowCausalToken
            } else {
                Class::Read
            }
        }
        b"fetch" | b"move" | b"close" | b"savepoint" | b"release" => Class::Read,
        b"explain" => explain(cx, lx),
        b"copy" => copy(cx, lx),
        b"declare" => declare(cx, lx),
        b"begin" => {
            let _ = lx.eat_kw("work") || lx.eat_kw("transaction");
            session::begin(lx)
        }
        b"start" if lx.eat_kw("transaction") => session::begin(lx),
        b"commit" | b"end" | b"abort" | b"rollback" => end_transaction(kw, lx),
        b"set" => session::set(sql, lx),
        b"reset" => session::reset(lx),
        b"discard" => match (lx.next_token(), lx.next_token()) {
            (Some(t), None) if t.is_kw("all") => Class::Session(Setting::DiscardAll),
            (Some(t), None) if t.is_any_kw(&["plans", "sequences", "temp", "temporary"]) => {
                Class::Write
            }
            _ => Class::Unknown,
        },
        b"listen" => Class::Pin(PinReason::Listen),
        b"prepare" => match lx.next_token() {
            Some(t) if t.is_kw("transaction") => Class::Write,
            Some(_) => Class::Pin(PinReason::SqlPrepare),
            None => Class::Unknown,
        },
        b"create" => create(lx).unwrap_or_else(|| whole_scan(Mode::Pins)),
        b"insert" | b"update" | b"delete" | b"merge" | b"call" => whole_scan(Mode::Pins),
        b"alter" | b"drop" | b"truncate" | b"grant" | b"revoke" | b"comment" | b"security"
        | b"vacuum" | b"analyze" | b"analyse" | b"cluster" | b"reindex" | b"refresh" | b"lock"
        | b"do" | b"notify" | b"unlisten" | b"checkpoint" | b"load" | b"import" | b"reassign"
        | b"execute" | b"deallocate" => Class::Write,
        _ => Class::Unknown,
    }
}

/// EXPLAIN: Read unless ANALYZE, then whatever the inner statement is.
fn explain(cx: Cx<'_>, mut lx: Lexer<'_>) -> Class {
    let mut analyze = false;
    let mut ahead = lx.clone();
    let options = ahead.next_token().is_some_and(|t| t.is(Kind::LParen))
        && ahead
            .next_token()
            .is_some_and(|t| !t.is(Kind::LParen) && !t.is_any_kw(QUERY_START));
    if options {
        lx.next_token();
        'options: loop {
            let Some(option) = lx.next_token() else {
                return Class::Unknown;
            };
            if option.is(Kind::RParen) {
                break;
            }
            let mut value = None;
            let closed = loop {
                match lx.next_token() {
                    None => return Class::Unknown,
                    Some(t) if t.is(Kind::Comma) => break false,
                    Some(t) if t.is(Kind::RParen) => break true,
                    Some(t) => {
                        value.get_or_insert(t);
                    }
                }
            };
            if option.is_any_kw(&["analyze", "analyse"]) {
                analyze = !value.is_some_and(is_false);
            }
            if closed {
                break 'options;
            }
        }
    } else {
        analyze = lx.eat_kw("analyze") || lx.eat_kw("analyse");
        lx.eat_kw("verbose");
    }
    if analyze {
        cx.inner(&lx)
    } else {
        Class::Read
    }
}

/// `false`, `off`, `0` (also quoted): an option value that disables it.
fn is_false(t: Token<'_>) -> bool {
    let text = t.string_body().unwrap_or(t.text);
    ["false", "off", "0"]
        .iter()
        .any(|f| text.eq_ignore_ascii_case(f.as_bytes()))
}

/// COPY: `TO STDOUT` reads, `FROM` writes. `TO 'file'` / `TO PROGRAM`
/// writes on the server host, so it is kept on the primary.
fn copy(cx: Cx<'_>, mut lx: Lexer<'_>) -> Class {
    let to_client = |lx: &Lexer<'_>| lx.peek().is_some_and(|t| t.is_kw("stdout"));
    if lx.peek().is_some_and(|t| t.is(Kind::LParen)) {
        lx.next_token();
        let inner = lx.clone();
        let mut depth = 1usize;
        let mut inner_end = None;
        for t in lx.by_ref() {
            match t.kind {
                Kind::LParen => depth += 1,
                Kind::RParen => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        inner_end = Some(t.start);
                        break;
                    }
                }
                _ => {}
            }
        }
        let Some(inner_end) = inner_end else {
            return Class::Unknown;
        };
        let start = inner.peek().map_or(inner_end, |t| t.start);
        let query = executed(stmt(cx.sql, start, inner_end, cx.wf, cx.depth + 1, None));
        if !lx.eat_kw("to") {
            return Class::Unknown;
        }
        return match query {
            Class::Read if !to_client(&lx) => Class::Write,
            other => other,
        };
    }
    let mut depth = 0usize;
    while let Some(t) = lx.next_token() {
        match t.kind {
            Kind::LParen => depth += 1,
            Kind::RParen => depth = depth.saturating_sub(1),
            _ if depth == 0 && t.is_kw("from") => return Class::Write,
            _ if depth == 0 && t.is_kw("to") => {
                return if to_client(&lx) {
                    Class::Read
                } else {
                    Class::Write
                };
            }
            _ => {}
        }
    }
    Class::Unknown
}

/// `DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR
/// [{WITH|WITHOUT} HOLD] FOR query`.
fn declare(cx: Cx<'_>, mut lx: Lexer<'_>) -> Class {
    if lx.next_token().and_then(|t| t.name()).is_none() {
        return Class::Unknown;
    }
    loop {
        match lx.next_token() {
            Some(t) if t.is_kw("cursor") => break,
            Some(t) if t.is_any_kw(&["binary", "insensitive", "asensitive", "no", "scroll"]) => {}
            _ => return Class::Unknown,
        }
    }
    let hold = lx.eat_kw("with");
    if (hold || lx.eat_kw("without")) && !lx.eat_kw("hold") {
        return Class::Unknown;
    }
    if !lx.eat_kw("for") {
        return Class::Unknown;
    }
    let query = cx.inner(&lx);
    if hold {
        Class::Pin(PinReason::WithHoldCursor)
    } else {
        query
    }
}

/// COMMIT / END / ABORT / ROLLBACK [WORK|TRANSACTION] [AND [NO] CHAIN],
/// ROLLBACK ... TO savepoint, COMMIT / ROLLBACK PREPARED.
fn end_transaction(kw: &[u8], mut lx: Lexer<'_>) -> Class {
    let two_phase = kw == b"commit" || kw == b"rollback";
    if two_phase && lx.eat_kw("prepared") {
        return Class::Write;
    }
    let _ = lx.eat_kw("work") || lx.eat_kw("transaction");
    if kw == b"rollback" && lx.eat_kw("to") {
        return Class::Read;
    }
    if lx.eat_kw("and") {
        lx.eat_kw("no");
        if !lx.eat_kw("chain") {
            return Class::Unknown;
        }
    }
    match lx.next_token() {
        None => Class::End,
        Some(_) => Class::Unknown,
    }
}

/// CREATE: temporary objects pin the session (`Some`); everything else
/// writes (`None`: the caller still looks for pinning calls).
fn create(mut lx: Lexer<'_>) -> Option<Class> {
    if lx.eat_kw("or") {
        lx.eat_kw("replace");
    }
    let _ = lx.eat_kw("global") || lx.eat_kw("local");
    if lx.eat_kw("temp") || lx.eat_kw("temporary") {
        return Some(Class::Pin(PinReason::TempTable));
    }
    // An object created in schema pg_temp is temporary too.
    let mut prev: Option<Token<'_>> = None;
    for t in lx.take(16) {
        if t.is(Kind::LParen) || t.is_kw("as") {
            break;
        }
        let prev_is_pg_temp = prev
            .and_then(|p| p.name())
            .is_some_and(|n| n.eq_ignore_ascii_case(b"pg_temp"));
        if t.is(Kind::Dot) && prev_is_pg_temp {
            return Some(Class::Pin(PinReason::TempTable));
        }
        prev = Some(t);
    }
    None
}
