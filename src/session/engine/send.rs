//! Writing a routed batch to its leased connection: first what the connection lacks (evictions
//! of old statements, the session's settings), then the client's messages with statement names
//! mapped to proxy-wide ones and Parses added for statements the connection lacks, all in one
//! write; and the queue entries that say what each answer is.

use bytes::{BufMut, Bytes, BytesMut};

use super::expect::{Effect, Kind, Origin, ProxyUnit, Retry, ServerHas, Unit};
use super::*;
use crate::cancel::CancelTarget;
use crate::classify::Class;
use crate::protocol::backend::TxnStatus;
use crate::protocol::encode;
use crate::protocol::tag;

use super::super::batch::{self, Msg, StatementDef, Use};

/// At or after the end of every commit record already inserted (`pg_current_wal_lsn()` may
/// trail it with `synchronous_commit = off`).
const COMMIT_LSN_SQL: &str = "SELECT pg_current_wal_insert_lsn()";

/// A statement name no server connection ever has: a Bind to it fails with 26000, which makes
/// the server skip to the next Sync exactly as the client's own refused message would have.
const NO_SUCH_STATEMENT: &[u8] = b"\x01pgmeridian-none";

impl Engine {
    pub(super) fn send(
        &mut self,
        slot: Slot,
        batch: Batch,
        reason: Reason,
        b: &mut Buffers,
        env: &Env,
    ) {
        let Some(node) = self.server(slot).map(|s| s.state.node.clone()) else {
            return;
        };
        self.obs.routed(
            env,
            &self.cluster.name,
            self.location.source,
            slot,
            reason,
            &node,
        );
        self.observe_routed(slot, reason, &node, env);
        let class = batch.class.clone().unwrap_or(Class::Empty);
        if matches!(class, Class::Pin(_)) {
            self.pin(env);
        }
        let wrote = matches!(class, Class::Write | Class::Unknown | Class::Pin(_));
        let opens_txn = matches!(
            class,
            Class::Begin { .. } | Class::Write | Class::Unknown | Class::Pin(_)
        );
        let autocommit = self.route.txn == TxnStatus::Idle && !self.txn_may_be_opening;
        // A batch that may commit a write on the primary gets the proxy's own position query
        // right behind it (same write, no round trip): the exact commit position.
        let capture = slot == Slot::Primary
            && self.topology.routing.read_your_writes == crate::config::ReadYourWrites::Lsn
            && batch.completes
            && !batch.copies
            && ((wrote && autocommit)
                || (matches!(class, Class::End)
                    && (self.route.txn == TxnStatus::InTransaction || self.txn_may_be_opening)));
        let max_prepared = self.cluster.pooling.max_prepared_statements;
        let epoch = env.schema_epoch.load(std::sync::atomic::Ordering::Relaxed);
        let out = &mut b.server_out[slot.index()];
        let Some(server) = self.servers[slot.index()].as_mut() else {
            return;
        };
        let fresh = server.owed.is_empty() && !server.open_batch;
        let retryable = slot == Slot::Replica
            && autocommit
            && batch.completes
            && fresh
            && !matches!(class, Class::Begin { .. });
        // Another batch behind a retryable one: its answers can no longer be replaced, so they
        // go out now, in order.
        if server.retry.take().is_some() {
            super::answers::pass_on(&mut b.client_out, &mut server.tentative);
        }
        if fresh && autocommit {
            evict(server, &batch, epoch, max_prepared, out);
            if let Some(sql) = self.settings.replay_sql(server.state.settings.as_ref()) {
                let _ = postgres_protocol::message::frontend::query(&sql, out);
                let unit = Unit {
                    proxy: Some(ProxyUnit::Settings),
                    ..Unit::default()
                };
                server
                    .owed
                    .push(Kind::Query { unit }, Origin::Proxy, Effect::default());
                server.state.settings = Some(self.settings.list().clone());
                server.state.unnamed = None;
            }
        }
        let unit = Unit {
            wrote,
            setting: batch.setting.clone(),
            sent_at: Some(env.now),
            drops_all_statements: batch.deallocate == Some(None),
            ..Unit::default()
        };
        write_messages(server, &batch, unit, epoch, out);
        server.open_batch = !batch.completes;
        if capture {
            let _ = postgres_protocol::message::frontend::query(COMMIT_LSN_SQL, out);
            let unit = Unit {
                proxy: Some(ProxyUnit::CommitLsn),
                ..Unit::default()
            };
            server
                .owed
                .push(Kind::Query { unit }, Origin::Proxy, Effect::default());
        }
        if retryable {
            server.retry = Some(Retry {
                batch: Box::new(batch),
                retrying: false,
                wrote: false,
            });
        }
        self.cancel.set_target(CancelTarget {
            node,
            pid: server.state.pid,
            key: server.state.key,
        });
        let Some(server) = self.servers[slot.index()].as_mut() else {
            return;
        };
        super::answers::advance(server, &mut self.statements, &mut b.client_out);
        self.active = Some(slot);
        self.txn_may_be_opening |= opens_txn;
    }
}

/// Closes the least recently used statements of a connection over its limit (never those the
/// batch uses), as a unit of its own in front of the batch.
fn evict(server: &mut Server, batch: &Batch, epoch: u64, max: usize, out: &mut BytesMut) {
    let prepared = &mut server.state.prepared;
    if prepared.len() <= max {
        return;
    }
    let used: Vec<(u128, u64)> = batch
        .msgs
        .iter()
        .filter_map(|m| match m {
            Msg::Parse { def, .. } => Some((def.key, epoch)),
            Msg::Uses {
                stmt: Use::Named(d),
                ..
            } => Some((d.key, epoch)),
            _ => None,
        })
        .collect();
    let mut by_age: Vec<(u64, (u128, u64))> = prepared
        .iter()
        .filter(|(k, _)| !used.contains(k))
        .map(|(k, t)| (*t, *k))
        .collect();
    by_age.sort_unstable();
    // Down to 90% of the limit, so evictions come in batches rather than one per transaction.
    let goal = max - max / 10;
    let n = prepared.len().saturating_sub(goal).min(by_age.len());
    if n == 0 {
        return;
    }
    for &(_, sid) in &by_age[..n] {
        let _ = postgres_protocol::message::frontend::close(
            b'S',
            batch::server_name(sid.0, sid.1).as_str(),
            out,
        );
        prepared.remove(&sid);
        server
            .owed
            .push(Kind::Close, Origin::Proxy, Effect::default());
    }
    postgres_protocol::message::frontend::sync(out);
    let unit = Unit {
        proxy: Some(ProxyUnit::Evict),
        ..Unit::default()
    };
    server.owed.push(
        Kind::Sync {
            unit,
            ignored: false,
        },
        Origin::Proxy,
        Effect::default(),
    );
}

/// Writes the batch's messages for this connection and queues what each answer is.
fn write_messages(server: &mut Server, batch: &Batch, unit: Unit, epoch: u64, out: &mut BytesMut) {
    server.state.tick += 1;
    let tick = server.state.tick;
    let mut unit = Some(unit);
    let n = batch.msgs.len();
    for (i, m) in batch.msgs.iter().enumerate() {
        let last = i + 1 == n;
        match m {
            Msg::Raw(raw) => {
                out.extend_from_slice(raw);
                let kind = match raw[0] {
                    tag::EXECUTE => Kind::Execute,
                    tag::DESCRIBE => Kind::DescribePortal,
                    tag::CLOSE => Kind::Close,
                    tag::FLUSH => continue,
                    tag::SYNC => {
                        if server.owed.answers_ignored_sync() {
                            continue;
                        }
                        Kind::Sync {
                            unit: take_unit(&mut unit, last),
                            ignored: false,
                        }
                    }
                    tag::QUERY | tag::FUNCTION_CALL => {
                        server.state.unnamed = None;
                        Kind::Query {
                            unit: take_unit(&mut unit, last),
                        }
                    }
                    _ => continue,
                };
                server.owed.push(kind, Origin::Client, Effect::default());
            }
            Msg::ParseUnnamed { raw, def } => {
                out.extend_from_slice(raw);
                server.state.unnamed = Some(def.key);
                let effect = Effect {
                    server_has: Some(ServerHas::Unnamed),
                    ..Effect::default()
                };
                server.owed.push(Kind::Parse, Origin::Client, effect);
            }
            Msg::Parse { name, def, seq } => {
                let defines = Some((name.clone(), *seq));
                let sid = (def.key, epoch);
                if let Some(t) = server.state.prepared.get_mut(&sid) {
                    *t = tick;
                    let effect = Effect {
                        defines,
                        ..Effect::default()
                    };
                    server
                        .owed
                        .push(Kind::Synthetic(parse_complete()), Origin::Client, effect);
                } else {
                    put_parse(
                        out,
                        batch::server_name(def.key, epoch).as_bytes(),
                        &def.body,
                    );
                    server.state.prepared.insert(sid, tick);
                    let effect = Effect {
                        defines,
                        server_has: Some(ServerHas::Named(sid)),
                    };
                    server.owed.push(Kind::Parse, Origin::Client, effect);
                }
            }
            Msg::ParseDuplicate { name } => {
                refused_stand_in(
                    server,
                    out,
                    "42P05",
                    &format!("prepared statement \"{name}\" already exists"),
                );
            }
            Msg::Uses { raw, at, stmt } => {
                let kind = || match raw[0] {
                    tag::BIND => Kind::Bind,
                    _ => Kind::DescribeStatement { params_seen: false },
                };
                match stmt {
                    Use::Unnamed(def) => {
                        if let Some(def) = def {
                            if server.state.unnamed != Some(def.key) {
                                put_parse(out, b"", &def.body);
                                server.state.unnamed = Some(def.key);
                                let effect = Effect {
                                    server_has: Some(ServerHas::Unnamed),
                                    ..Effect::default()
                                };
                                server.owed.push(Kind::Parse, Origin::ProxyParse, effect);
                            }
                        }
                        out.extend_from_slice(raw);
                        server.owed.push(kind(), Origin::Client, Effect::default());
                    }
                    Use::Named(def) => {
                        ensure_named(server, def, epoch, tick, out);
                        let name = batch::server_name(def.key, epoch);
                        put_renamed(out, raw, at.clone(), name.as_bytes());
                        server.owed.push(kind(), Origin::Client, Effect::default());
                    }
                    Use::Unknown(name) => {
                        refused_stand_in(
                            server,
                            out,
                            "26000",
                            &format!("prepared statement \"{name}\" does not exist"),
                        );
                    }
                }
            }
            Msg::CloseStatement => {
                let mut done = BytesMut::new();
                done.extend_from_slice(b"3\0\0\0\x04");
                server.owed.push(
                    Kind::Synthetic(done.freeze()),
                    Origin::Client,
                    Effect::default(),
                );
            }
        }
    }
}

/// The unit goes with the batch's last message (the one answered by ReadyForQuery).
fn take_unit(unit: &mut Option<Unit>, last: bool) -> Unit {
    if last {
        unit.take().unwrap_or_default()
    } else {
        Unit::default()
    }
}

/// Prepares a named statement on the connection if it lacks it (its answer is swallowed).
fn ensure_named(
    server: &mut Server,
    def: &StatementDef,
    epoch: u64,
    tick: u64,
    out: &mut BytesMut,
) {
    let sid = (def.key, epoch);
    if let Some(t) = server.state.prepared.get_mut(&sid) {
        *t = tick;
        return;
    }
    put_parse(
        out,
        batch::server_name(def.key, epoch).as_bytes(),
        &def.body,
    );
    server.state.prepared.insert(sid, tick);
    let effect = Effect {
        server_has: Some(ServerHas::Named(sid)),
        ..Effect::default()
    };
    server.owed.push(Kind::Parse, Origin::ProxyParse, effect);
}

/// Sends a Bind the server refuses with 26000 in place of a message PostgreSQL would refuse
/// (the server then skips to Sync as it would have); the client gets `code`/`message`.
fn refused_stand_in(server: &mut Server, out: &mut BytesMut, code: &str, message: &str) {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_slice(NO_SUCH_STATEMENT);
    body.put_u8(0);
    body.put_slice(&[0, 0, 0, 0, 0, 0]);
    out.put_u8(tag::BIND);
    out.put_u32(body.len() as u32 + 4);
    out.put_slice(&body);
    let mut msg = BytesMut::new();
    encode::error_response(&mut msg, "ERROR", code, message, None, None);
    server.owed.push(
        Kind::Replace {
            msg: msg.freeze(),
            code: "26000",
        },
        Origin::Client,
        Effect::default(),
    );
}

fn put_parse(out: &mut BytesMut, name: &[u8], body: &[u8]) {
    out.put_u8(tag::PARSE);
    out.put_u32((4 + name.len() + 1 + body.len()) as u32);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(body);
}

/// `raw` (a Bind or Describe) with the statement name at `at` replaced by `name`.
fn put_renamed(out: &mut BytesMut, raw: &Bytes, at: std::ops::Range<usize>, name: &[u8]) {
    let len = raw.len() - at.len() + name.len();
    out.put_u8(raw[0]);
    out.put_u32((len - 1) as u32);
    out.put_slice(&raw[5..at.start]);
    out.put_slice(name);
    out.put_slice(&raw[at.end..]);
}

fn parse_complete() -> Bytes {
    Bytes::from_static(b"1\0\0\0\x04")
}
