//! Batches the proxy answers itself, in order with everything else: refusals, DEALLOCATE of
//! statements only the proxy holds, batches with nothing for a server, and the statements
//! that talk to the proxy (`SET pgmeridian.route`, `SET`/`RESET`/`SHOW
//! pgmeridian.causal_token`) in the simple or the extended protocol.

use bytes::{BufMut, BytesMut};

use super::*;
use crate::classify::{Class, Hint};
use crate::protocol::backend::TxnStatus;
use crate::protocol::encode;
use crate::protocol::tag;

use super::super::batch::{Msg, Use};

/// A statement the proxy runs itself.
#[derive(Debug, Clone)]
pub(crate) enum ProxyStatement {
    RouteHint(Hint),
    SetToken(String),
    ResetToken,
    ShowToken,
}

/// What PostgreSQL says to anything but ROLLBACK in a failed transaction.
fn aborted() -> ClientError {
    ClientError::error(
        "25P02",
        "current transaction is aborted, commands ignored until end of transaction block",
    )
}

impl Engine {
    /// The batch is one the proxy answers, and how.
    pub(super) fn answered_here(&self, batch: &Batch) -> Option<LocalReply> {
        let statement = match batch.class.as_ref()? {
            Class::RouteHint(h) => Some(ProxyStatement::RouteHint(*h)),
            Class::CausalToken(Some(t)) => Some(ProxyStatement::SetToken(t.clone())),
            Class::CausalToken(None) => Some(ProxyStatement::ResetToken),
            Class::ShowCausalToken => Some(ProxyStatement::ShowToken),
            _ => None,
        };
        if let Some(statement) = statement.filter(|_| batch.completes) {
            return Some(LocalReply::Run {
                batch: Box::new(batch.clone()),
                statement,
            });
        }
        match batch.deallocate.as_ref()? {
            Some(name) if self.statements.get(name).is_some() => {
                Some(LocalReply::Deallocate(name.clone()))
            }
            // SQL-level PREPAREd statements exist only on a pinned session's connection.
            None if !self.route.pinned => Some(LocalReply::DeallocateAll),
            _ => None,
        }
    }

    pub(super) fn answer_locally(&mut self, reply: LocalReply, b: &mut Buffers, env: &Env) {
        let out = &mut b.client_out;
        match reply {
            LocalReply::Refuse(e) => {
                self.obs.count_error(e.kind);
                e.encode(out);
            }
            LocalReply::Deallocate(name) => {
                if self.route.txn == TxnStatus::Failed {
                    aborted().encode(out);
                } else {
                    self.statements.remove(&name);
                    out.extend_from_slice(b"C\0\0\0\x0fDEALLOCATE\0");
                }
            }
            LocalReply::DeallocateAll => {
                if self.route.txn == TxnStatus::Failed {
                    aborted().encode(out);
                } else {
                    self.statements.clear_named();
                    out.extend_from_slice(b"C\0\0\0\x13DEALLOCATE ALL\0");
                }
            }
            LocalReply::Inert(batch) => {
                for m in &batch.msgs {
                    if let Msg::CloseStatement = m {
                        out.extend_from_slice(b"3\0\0\0\x04");
                    }
                }
                if !batch.completes {
                    return;
                }
            }
            LocalReply::Error(e) => {
                self.obs.count_error(e.kind);
                e.encode(out);
                return;
            }
            LocalReply::Ready => {}
            LocalReply::Run { batch, statement } => {
                // Answers for each message, as a server would give them; ReadyForQuery at the
                // Query or Sync.
                return self.run_proxy_statement(&batch, &statement, b, env);
            }
        }
        encode::ready_for_query(out, self.route.txn);
    }

    fn run_proxy_statement(
        &mut self,
        batch: &Batch,
        statement: &ProxyStatement,
        b: &mut Buffers,
        env: &Env,
    ) {
        let show = matches!(statement, ProxyStatement::ShowToken);
        for m in &batch.msgs {
            match m {
                Msg::ParseUnnamed { .. } | Msg::Parse { .. } | Msg::ParseDuplicate { .. } => {
                    b.client_out.extend_from_slice(b"1\0\0\0\x04")
                }
                Msg::CloseStatement => b.client_out.extend_from_slice(b"3\0\0\0\x04"),
                Msg::Uses { raw, stmt, .. } => {
                    if raw[0] == tag::BIND {
                        b.client_out.extend_from_slice(b"2\0\0\0\x04");
                    } else {
                        let _: &Use = stmt;
                        // ParameterDescription (no parameters), then the row shape.
                        b.client_out.extend_from_slice(b"t\0\0\0\x06\0\0");
                        row_shape(&mut b.client_out, show);
                    }
                }
                Msg::Raw(raw) => match raw[0] {
                    tag::DESCRIBE => row_shape(&mut b.client_out, show),
                    tag::CLOSE => b.client_out.extend_from_slice(b"3\0\0\0\x04"),
                    tag::EXECUTE => self.execute_proxy_statement(statement, false, b, env),
                    tag::QUERY => {
                        self.execute_proxy_statement(statement, true, b, env);
                        encode::ready_for_query(&mut b.client_out, self.route.txn);
                    }
                    tag::SYNC => encode::ready_for_query(&mut b.client_out, self.route.txn),
                    _ => {}
                },
            }
        }
    }

    /// Runs the statement: its effect, then what the client is told (`with_shape`: a simple
    /// query, which describes its own rows).
    fn execute_proxy_statement(
        &mut self,
        statement: &ProxyStatement,
        with_shape: bool,
        b: &mut Buffers,
        env: &Env,
    ) {
        let out = &mut b.client_out;
        match statement {
            ProxyStatement::RouteHint(h) => {
                self.route.route_override = Some(*h);
                command_complete(out, "SET");
            }
            ProxyStatement::SetToken(text) => match self.present_token(text, env) {
                Ok(()) => {
                    self.flush_notices(&mut b.client_out);
                    command_complete(&mut b.client_out, "SET");
                }
                Err(e) => {
                    self.obs.count_error(e.kind);
                    e.encode(&mut b.client_out);
                }
            },
            ProxyStatement::ResetToken => {
                self.token_req = crate::route::Requirement::NONE;
                self.pending_token = None;
                command_complete(out, "RESET");
            }
            ProxyStatement::ShowToken => {
                let token = self.current_token(env);
                if with_shape {
                    row_shape(&mut b.client_out, true);
                }
                data_row(&mut b.client_out, &token);
                command_complete(&mut b.client_out, "SHOW");
            }
        }
    }
}

/// RowDescription of `SHOW pgmeridian.causal_token` (one text column), or NoData.
fn row_shape(out: &mut BytesMut, show: bool) {
    if !show {
        out.extend_from_slice(b"n\0\0\0\x04");
        return;
    }
    let name = crate::causal::PARAMETER.as_bytes();
    let len = 4 + 2 + name.len() + 1 + 4 + 2 + 4 + 2 + 4 + 2;
    out.put_u8(b'T');
    out.put_u32(len as u32);
    out.put_u16(1);
    out.put_slice(name);
    out.put_u8(0);
    out.put_u32(0); // table OID
    out.put_u16(0); // column number
    out.put_u32(25); // text
    out.put_i16(-1); // variable length
    out.put_i32(-1); // no type modifier
    out.put_u16(0); // text format
}

fn data_row(out: &mut BytesMut, value: &str) {
    out.put_u8(b'D');
    out.put_u32((4 + 2 + 4 + value.len()) as u32);
    out.put_u16(1);
    out.put_u32(value.len() as u32);
    out.put_slice(value.as_bytes());
}

fn command_complete(out: &mut BytesMut, tag: &str) {
    out.put_u8(b'C');
    out.put_u32((4 + tag.len() + 1) as u32);
    out.put_slice(tag.as_bytes());
    out.put_u8(0);
}
