//! What a leased server connection owes: one entry per message sent to it (the client's, or the
//! proxy's own put in front of them), in order, and how each server message moves that queue.
//! Extended-protocol error skipping, COPY's ignored Sync, answers the proxy gives itself
//! (ParseComplete for a statement the server already has, CloseComplete) and errors it
//! rewords all live here. Pure: no I/O, no clock.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::classify::Setting;
use crate::pool::ServerState;
use crate::protocol::backend::{ErrorFields, TxnStatus};
use crate::protocol::tag::backend as btag;

use super::super::batch::{Batch, Statements};

/// Whose answer an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client's message: its answer is forwarded.
    Client,
    /// The proxy's own (settings replay, evictions): its answer is swallowed.
    Proxy,
    /// A Parse the proxy sends for a statement the client's next message uses: success is
    /// swallowed, an error is the client's (its statement cannot be prepared there).
    ProxyParse,
}

/// What a sent message defined, undone if the server refuses or skips it.
#[derive(Debug, Default, Clone)]
pub struct Effect {
    /// The client's statement name and definition number.
    pub defines: Option<(String, u64)>,
    /// What the server now has.
    pub server_has: Option<ServerHas>,
}

/// A statement a message put on the server.
#[derive(Debug, Clone, Copy)]
pub enum ServerHas {
    /// A proxy-wide named statement: (key, schema epoch).
    Named((u128, u64)),
    /// The unnamed statement.
    Unnamed,
}

/// A ReadyForQuery-terminated unit and what the session learns when it ends.
#[derive(Debug, Default)]
pub struct Unit {
    /// The unit may have written: reads after it must see it.
    pub wrote: bool,
    /// Boxed: rare, and a unit moves with every answer.
    pub setting: Option<Box<(Setting, std::sync::Arc<str>)>>,
    pub errored: bool,
    /// What the proxy sent it for, when it is not the client's.
    pub proxy: Option<ProxyUnit>,
    /// When it was sent (`pgmeridian_batch_duration_seconds`).
    pub sent_at: Option<std::time::Instant>,
    /// Statements it deallocates on the server (a forwarded DEALLOCATE ALL).
    pub drops_all_statements: bool,
    /// The WAL position a `CommitLsn` unit read.
    pub lsn: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyUnit {
    /// Bringing the connection's settings to the session's.
    Settings,
    /// Closing least recently used statements.
    Evict,
    /// `SELECT pg_current_wal_insert_lsn()` right behind a batch that commits a write: a WAL
    /// position at or after the commit, with no round trip of its own.
    CommitLsn,
    /// On a replica, a wait until it has replayed the position a read needs.
    AwaitReplay,
}

#[derive(Debug)]
pub enum Kind {
    Parse,
    Bind,
    Close,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement {
        params_seen: bool,
    },
    DescribePortal,
    /// Rows (or COPY) until CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// ReadyForQuery. `ignored`: the server received it during COPY FROM and will answer the
    /// client's next Sync instead.
    Sync {
        unit: Unit,
        ignored: bool,
    },
    /// A simple Query or FunctionCall: everything until ReadyForQuery (errors do not skip).
    Query {
        unit: Unit,
    },
    /// Not the server's: given to the client when it reaches the front.
    Synthetic(Bytes),
    /// The server will refuse a stand-in message with SQLSTATE `code`; the client gets `msg`.
    Replace {
        msg: Bytes,
        code: &'static str,
    },
}

#[derive(Debug)]
pub struct Expect {
    pub kind: Kind,
    pub origin: Origin,
    pub effect: Effect,
}

/// Where a server message's bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Client,
    Drop,
}

/// What one server message meant.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sink: Option<Sink>,
    /// Send these bytes to the client instead of the message.
    pub replace: Option<Bytes>,
    /// A ReadyForQuery ended a unit.
    pub ready: Option<(TxnStatus, Unit)>,
    /// An error answered a client message (for the safety net).
    /// Boxed: rare, and an outcome is returned for every server message.
    pub client_error: Option<Box<ErrorFields>>,
    /// The server sent something that fits nothing it owes: do not reuse it.
    pub confused: bool,
}

/// The queue of a leased connection and the server-side protocol state around it.
#[derive(Debug, Default)]
pub struct Owed {
    pub queue: VecDeque<Expect>,
    /// An extended-protocol error: the server discards messages until the next Sync.
    pub skipping: bool,
    /// The server is in COPY FROM: the client's CopyData goes here.
    pub copy_in: bool,
}

impl Owed {
    pub fn push(&mut self, kind: Kind, origin: Origin, effect: Effect) {
        self.queue.push_back(Expect {
            kind,
            origin,
            effect,
        });
    }

    /// A Sync the server will answer for an ignored one still queued (COPY FROM's second
    /// Sync): true if one was waiting, so no new entry is needed.
    pub fn answers_ignored_sync(&mut self) -> bool {
        for e in self.queue.iter_mut() {
            if let Kind::Sync { ignored, .. } = &mut e.kind {
                if *ignored {
                    *ignored = false;
                    return true;
                }
            }
        }
        false
    }

    /// Where the bytes of a message with `tag` go, without consuming anything.
    pub fn sink_for(&self, tag: u8) -> Sink {
        match tag {
            btag::NOTIFICATION_RESPONSE => Sink::Client,
            _ => match self.queue.front().map(|e| e.origin) {
                Some(Origin::Client) | None => Sink::Client,
                Some(Origin::Proxy | Origin::ProxyParse) => Sink::Drop,
            },
        }
    }

    /// Gives the client the answers the proxy owes it at the front (into `out`), and drops
    /// what the server skips after an error.
    pub fn advance(
        &mut self,
        server: &mut ServerState,
        statements: &mut Statements,
        out: &mut bytes::BytesMut,
    ) {
        loop {
            let skipping = self.skipping;
            let Some(front) = self.queue.front() else {
                return;
            };
            match &front.kind {
                Kind::Synthetic(_) if !skipping => {
                    if let Some(Expect {
                        kind: Kind::Synthetic(msg),
                        ..
                    }) = self.queue.pop_front()
                    {
                        out.extend_from_slice(&msg);
                    }
                }
                Kind::Sync { .. } => return,
                _ if skipping => {
                    if let Some(e) = self.queue.pop_front() {
                        undo(&e.effect, server, statements);
                    }
                }
                _ => return,
            }
        }
    }

    /// Moves the queue for one whole (`body` given) or streamed server message.
    pub fn on_message(
        &mut self,
        tag: u8,
        body: Option<&[u8]>,
        server: &mut ServerState,
        statements: &mut Statements,
    ) -> Outcome {
        let mut out = Outcome {
            sink: Some(self.sink_for(tag)),
            ..Outcome::default()
        };
        if matches!(
            tag,
            btag::NOTICE_RESPONSE | btag::NOTIFICATION_RESPONSE | btag::PARAMETER_STATUS
        ) {
            return out;
        }
        let Some(front) = self.queue.front_mut() else {
            // Nothing owed: only an error (a FATAL before closing) is expected here.
            if tag != btag::ERROR_RESPONSE {
                out.confused = true;
            }
            out.sink = Some(Sink::Drop);
            return out;
        };
        let origin = front.origin;
        let error = |body: Option<&[u8]>| body.and_then(ErrorFields::parse);
        if tag == btag::ERROR_RESPONSE {
            let fields = error(body);
            if origin == Origin::ProxyParse {
                out.sink = Some(Sink::Client);
            }
            if matches!(origin, Origin::Client | Origin::ProxyParse) {
                out.client_error = fields.clone().map(Box::new);
            }
            match &mut front.kind {
                Kind::Query { unit } | Kind::Sync { unit, .. } => {
                    unit.errored = true;
                    if self.copy_in {
                        self.copy_in = false;
                    }
                    return out;
                }
                Kind::Replace { msg, code } if fields.as_ref().is_some_and(|f| f.code == *code) => {
                    out.replace = Some(msg.clone());
                }
                _ => {}
            }
            let e = self.queue.pop_front();
            if let Some(e) = e {
                undo(&e.effect, server, statements);
            }
            self.copy_in = false;
            self.skipping = true;
            return out;
        }
        let done = match (&mut front.kind, tag) {
            (Kind::Parse, b'1') | (Kind::Bind, b'2') | (Kind::Close, b'3') => true,
            (Kind::DescribeStatement { params_seen }, b't') if !*params_seen => {
                *params_seen = true;
                false
            }
            (Kind::DescribeStatement { params_seen: true }, b'T' | b'n') => true,
            (Kind::DescribePortal, b'T' | b'n') => true,
            (Kind::Execute, b'D' | b'd' | b'c' | btag::COPY_OUT_RESPONSE) => false,
            (Kind::Execute, btag::COPY_IN_RESPONSE | btag::COPY_BOTH_RESPONSE) => {
                self.copy_in = true;
                // The server ignores Syncs that reach it during COPY FROM; the client's next
                // Sync gets the ReadyForQuery instead.
                for e in self.queue.iter_mut().skip(1) {
                    if let Kind::Sync { ignored, .. } = &mut e.kind {
                        *ignored = true;
                    }
                }
                false
            }
            (Kind::Execute, b'C' | b'I' | b's') => {
                self.copy_in = false;
                true
            }
            (Kind::Query { .. }, btag::READY_FOR_QUERY)
            | (Kind::Sync { .. }, btag::READY_FOR_QUERY) => {
                let status = body
                    .and_then(TxnStatus::from_ready_body)
                    .unwrap_or_default();
                if let Some(Expect {
                    kind: Kind::Query { unit } | Kind::Sync { unit, .. },
                    ..
                }) = self.queue.pop_front()
                {
                    out.ready = Some((status, unit));
                }
                self.skipping = false;
                self.copy_in = false;
                return out;
            }
            (Kind::Query { .. }, btag::COPY_IN_RESPONSE | btag::COPY_BOTH_RESPONSE) => {
                self.copy_in = true;
                false
            }
            (Kind::Query { unit }, b'D') if unit.proxy == Some(ProxyUnit::CommitLsn) => {
                unit.lsn = body
                    .and_then(crate::protocol::backend::first_column)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(crate::health::parse_lsn);
                false
            }
            (Kind::Query { .. }, b'C') => {
                self.copy_in = false;
                false
            }
            (Kind::Query { .. }, _) => false,
            _ => {
                out.confused = true;
                false
            }
        };
        if done {
            self.queue.pop_front();
        }
        out
    }

    /// The front is the proxy's commit-position query (its row must be read whole; the
    /// ReadyForQuery of the client's unit just before it waits for it).
    pub fn commit_lsn_next(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Expect {
                kind: Kind::Query { unit },
                ..
            }) if unit.proxy == Some(ProxyUnit::CommitLsn)
        )
    }

    /// Nothing owed, no COPY under way.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.copy_in
    }
}

/// A message the server refused or skipped: what it defined is withdrawn.
fn undo(effect: &Effect, server: &mut ServerState, statements: &mut Statements) {
    if let Some((name, seq)) = &effect.defines {
        statements.undefine(name, *seq);
    }
    match effect.server_has {
        Some(ServerHas::Unnamed) => server.unnamed = None,
        Some(ServerHas::Named(sid)) => {
            server.prepared.remove(&sid);
        }
        None => {}
    }
}

/// The batch a retry re-runs, kept with the answers held back meanwhile.
#[derive(Debug)]
pub struct Retry {
    pub batch: Box<Batch>,
    /// The replica refused it: its answers up to ReadyForQuery are swallowed.
    pub retrying: bool,
    /// Refused as a write (25006), not for a recovery conflict: its text is learned.
    pub wrote: bool,
}
