//! Rules for BEGIN / START TRANSACTION modes, SET and RESET.

use super::super::lexer::{Kind, Lexer, Token};
use super::super::{Class, Hint, PinReason, Setting};

pub(super) fn begin(lx: Lexer<'_>) -> Class {
    match transaction_modes(lx) {
        Some((read_only, serializable)) => Class::Begin {
            read_only: runnable_read_only(read_only, serializable),
        },
        None => Class::Unknown,
    }
}

/// SERIALIZABLE counts as READ WRITE: a hot standby refuses serializable transactions
/// ("cannot use serializable mode in a hot standby"), so they must run on the primary.
fn runnable_read_only(read_only: Option<bool>, serializable: bool) -> Option<bool> {
    if serializable {
        Some(false)
    } else {
        read_only
    }
}

/// Parses a transaction mode list; `Some((read_only, serializable))`, `None` if malformed.
/// READ WRITE anywhere wins over READ ONLY (the safe reading of a conflict).
fn transaction_modes(mut lx: Lexer<'_>) -> Option<(Option<bool>, bool)> {
    let mut read_only = None;
    let mut serializable = false;
    while let Some(t) = lx.next_token() {
        if t.is(Kind::Comma) || t.is_kw("deferrable") {
            continue;
        }
        let ok = if t.is_kw("isolation") {
            let level = lx.eat_kw("level").then(|| lx.next_token()).flatten()?;
            serializable |= level.is_kw("serializable");
            level.is_kw("serializable")
                || (level.is_kw("repeatable") && lx.eat_kw("read"))
                || (level.is_kw("read") && (lx.eat_kw("committed") || lx.eat_kw("uncommitted")))
        } else if t.is_kw("read") {
            if lx.eat_kw("only") {
                read_only = Some(read_only.unwrap_or(true));
                true
            } else if lx.eat_kw("write") {
                read_only = Some(false);
                true
            } else {
                false
            }
        } else {
            t.is_kw("not") && lx.eat_kw("deferrable")
        };
        if !ok {
            return None;
        }
    }
    Some((read_only, serializable))
}

/// `SET TRANSACTION ...` (also `SET LOCAL|SESSION TRANSACTION`).
fn set_transaction(mut lx: Lexer<'_>) -> Class {
    if lx.eat_kw("snapshot") {
        return Class::SetTransaction { read_only: None };
    }
    match transaction_modes(lx) {
        Some((read_only, serializable)) => Class::SetTransaction {
            read_only: runnable_read_only(read_only, serializable),
        },
        None => Class::Unknown,
    }
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION ...`: only the access mode
/// is replayable (as `default_transaction_read_only`).
fn session_characteristics(mut lx: Lexer<'_>) -> Class {
    if !(lx.eat_kw("as") && lx.eat_kw("transaction")) {
        return Class::Unknown;
    }
    let value = match transaction_modes(lx) {
        Some((_, true)) => return Class::Pin(PinReason::Serializable),
        Some((Some(true), false)) => "on",
        Some((Some(false), false)) => "off",
        Some((None, false)) => return Class::Write,
        None => return Class::Unknown,
    };
    Class::Session(Setting::Set {
        name: "default_transaction_read_only".to_string(),
        value: value.to_string(),
    })
}

/// `name[.name...]`: unquoted parts lowercased, quoted parts kept.
fn var_name(first: Token<'_>, lx: &mut Lexer<'_>) -> Option<String> {
    let part = |t: Token<'_>| {
        let text = String::from_utf8_lossy(t.name()?).into_owned();
        Some(if t.is(Kind::Ident) {
            text.to_ascii_lowercase()
        } else {
            text
        })
    };
    let mut name = part(first)?;
    while lx.peek().is_some_and(|t| t.is(Kind::Dot)) {
        lx.next_token();
        name.push('.');
        name.push_str(&part(lx.next_token()?)?);
    }
    Some(name)
}

fn is_route(name: &str) -> bool {
    name.eq_ignore_ascii_case("pgmeridian.route")
}

/// The (possibly dotted) setting name after SHOW.
pub(super) fn show_name(first: Token<'_>, lx: &mut Lexer<'_>) -> Option<String> {
    var_name(first, lx)
}

pub(super) fn is_causal_token(name: &str) -> bool {
    name.eq_ignore_ascii_case("pgmeridian.causal_token")
}

/// `SET pgmeridian.causal_token` value: one word or string.
fn causal_token(value: Option<Token<'_>>, count: usize) -> Class {
    let text = match value {
        Some(t) if count == 1 => t.string_body().or_else(|| t.name()),
        _ => None,
    };
    match text.and_then(|t| std::str::from_utf8(t).ok()) {
        Some(t) => Class::CausalToken(Some(t.to_owned())),
        None => Class::Unknown,
    }
}

/// `role` / `session_authorization` set through the generic GUC syntax.
fn identity_pin(name: &str) -> Option<PinReason> {
    match name {
        "role" => Some(PinReason::SetRole),
        "session_authorization" => Some(PinReason::SessionAuthorization),
        _ => None,
    }
}

/// GUCs that look like session settings but act on the current transaction.
fn is_transaction_guc(name: &str) -> bool {
    matches!(
        name,
        "transaction_read_only" | "transaction_isolation" | "transaction_deferrable"
    )
}

/// SET (after the keyword).
pub(super) fn set(sql: &str, mut lx: Lexer<'_>) -> Class {
    let local = lx.eat_kw("local");
    if !local && lx.eat_kw("session") {
        if lx.eat_kw("characteristics") {
            return session_characteristics(lx);
        }
        if lx.eat_kw("authorization") {
            return Class::Pin(PinReason::SessionAuthorization);
        }
    }
    let Some(t) = lx.next_token() else {
        return Class::Unknown;
    };
    let pin_unless_local = |reason| {
        if local {
            Class::Read
        } else {
            Class::Pin(reason)
        }
    };
    if t.is_kw("transaction") {
        return set_transaction(lx);
    }
    if t.is_kw("constraints") {
        return Class::Read;
    }
    if t.is_kw("role") {
        return pin_unless_local(PinReason::SetRole);
    }
    if t.is_kw("session") && lx.eat_kw("authorization") {
        return pin_unless_local(PinReason::SessionAuthorization);
    }
    let generic = lx.peek().is_some_and(|n| n.is_kw("to") || n.is_op("="));
    let special = match () {
        _ if generic => None,
        _ if t.is_kw("time") && lx.eat_kw("zone") => Some("timezone"),
        _ if t.is_kw("names") => Some("client_encoding"),
        _ if t.is_kw("schema") => Some("search_path"),
        _ if t.is_kw("xml") && lx.eat_kw("option") => Some("xmloption"),
        _ => None,
    };
    let name = match special {
        Some(name) => name.to_string(),
        None => {
            let Some(name) = var_name(t, &mut lx) else {
                return Class::Unknown;
            };
            if lx.eat_kw("from") {
                return if lx.eat_kw("current") {
                    Class::Write
                } else {
                    Class::Unknown
                };
            }
            match lx.next_token() {
                Some(n) if n.is_kw("to") || n.is_op("=") => name,
                _ => return Class::Unknown,
            }
        }
    };
    // The value: everything up to the end of the statement.
    let first = lx.next_token();
    let mut count = usize::from(first.is_some());
    let mut value_end = first.map_or(0, |t| t.end);
    for t in lx {
        count += 1;
        value_end = t.end;
    }
    if is_route(&name) {
        return route_hint(first, count);
    }
    if is_causal_token(&name) {
        return causal_token(first, count);
    }
    if let Some(reason) = identity_pin(&name) {
        return pin_unless_local(reason);
    }
    if is_transaction_guc(&name) {
        let read_only = match first {
            Some(t) if count == 1 && name == "transaction_read_only" => parse_bool(t),
            _ => None,
        };
        return Class::SetTransaction { read_only };
    }
    if local {
        return Class::Read;
    }
    let value = match first {
        Some(t) => sql.get(t.start..value_end).unwrap_or_default().to_string(),
        None if special == Some("client_encoding") => "default".to_string(),
        None => return Class::Unknown,
    };
    if name == "default_transaction_isolation"
        && value.to_ascii_lowercase().contains("serializable")
    {
        // Every later transaction would be serializable, which a hot standby refuses.
        return Class::Pin(PinReason::Serializable);
    }
    Class::Session(Setting::Set { name, value })
}

/// A boolean GUC value (`on`, `'off'`, `true`, `1`...); `None` otherwise.
fn parse_bool(t: Token<'_>) -> Option<bool> {
    let text = t.string_body().unwrap_or(t.text);
    let is = |words: &[&str]| {
        words
            .iter()
            .any(|w| text.eq_ignore_ascii_case(w.as_bytes()))
    };
    if is(&["on", "true", "yes", "1"]) {
        Some(true)
    } else if is(&["off", "false", "no", "0"]) {
        Some(false)
    } else {
        None
    }
}

/// `SET pgmeridian.route` value: one word or string, primary/replica/auto.
fn route_hint(value: Option<Token<'_>>, count: usize) -> Class {
    let word = match value {
        Some(t) if count == 1 => t.string_body().or_else(|| t.name()),
        _ => None,
    };
    let hint = match word {
        Some(w) if w.eq_ignore_ascii_case(b"primary") => Hint::Primary,
        Some(w) if w.eq_ignore_ascii_case(b"replica") => Hint::Replica,
        Some(w) if w.eq_ignore_ascii_case(b"auto") => Hint::Auto,
        _ => return Class::Unknown,
    };
    Class::RouteHint(hint)
}

/// `RESET name` for a generic (possibly dotted) name.
fn reset_name(name: String) -> Class {
    if is_route(&name) {
        Class::RouteHint(Hint::Auto)
    } else if is_causal_token(&name) {
        Class::CausalToken(None)
    } else if let Some(reason) = identity_pin(&name) {
        Class::Pin(reason)
    } else if is_transaction_guc(&name) {
        Class::SetTransaction { read_only: None }
    } else {
        Class::Session(Setting::Reset { name })
    }
}

/// RESET (after the keyword).
pub(super) fn reset(mut lx: Lexer<'_>) -> Class {
    let Some(t) = lx.next_token() else {
        return Class::Unknown;
    };
    let class = if t.is_kw("role") {
        Class::Pin(PinReason::SetRole)
    } else if t.is_kw("session") && lx.eat_kw("authorization") {
        Class::Pin(PinReason::SessionAuthorization)
    } else if t.is_kw("all") {
        Class::Session(Setting::ResetAll)
    } else if t.is_kw("time") && lx.eat_kw("zone") {
        Class::Session(Setting::Reset {
            name: "timezone".to_string(),
        })
    } else if t.is_kw("transaction") && lx.eat_kw("isolation") {
        if !lx.eat_kw("level") {
            return Class::Unknown;
        }
        Class::SetTransaction { read_only: None }
    } else {
        var_name(t, &mut lx).map_or(Class::Unknown, reset_name)
    };
    match lx.next_token() {
        None => class,
        Some(_) => Class::Unknown,
    }
}
