//! The admin console, PgBouncer's convention: an admin user (`admin: true`) connects to the
//! virtual database `pgmeridian` and sends commands with the simple query protocol (`SHOW
//! NODES`, `PAUSE app`, …; see `console/parse.rs`). This file owns the console session's I/O
//! loop: greeting, reading queries, answering them as result sets or errors, shutdown. It
//! never opens a backend connection; the answers come from shared state (`console/show.rs`)
//! and the commands act on it (`console/act.rs`).

mod act;
mod parse;
mod show;
mod table;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::app::Shared;
use crate::clients::{ClientEntry, ClientState};
use crate::error::{sqlstate, ClientError};
use crate::protocol::backend::TxnStatus;
use crate::protocol::{encode, frame, tag};
use crate::stream::Stream;
use crate::topology::UserSpec;
use crate::wire::{MessageIo, WireError};

pub use parse::{parse, Command, Show, SyntaxError};
pub use table::{Table, Type};

/// An admin user authenticated for the console, with AuthenticationOk queued in `io`.
pub struct Login {
    pub io: MessageIo<Stream>,
    pub user: Arc<UserSpec>,
    /// The client's address (after PROXY protocol).
    pub addr: SocketAddr,
    pub application_name: Option<String>,
}

/// What the console tells clients it is (PgBouncer says `1.x/bouncer` the same way).
fn server_version() -> String {
    format!("{}/pgmeridian", env!("CARGO_PKG_VERSION"))
}

/// A console session from its greeting to its end.
pub async fn run(login: Login, id: u64, shared: &Arc<Shared>) {
    let Login {
        mut io,
        user,
        addr,
        application_name,
    } = login;
    let registered = shared.sessions.register(ClientEntry::new(
        id,
        addr,
        &user.name,
        crate::config::CONSOLE_DATABASE,
        io.io.is_tls(),
        "console",
    ));
    let version = server_version();
    let mut params: Vec<(&str, &str)> = vec![
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
    ];
    if let Some(name) = &application_name {
        params.push(("application_name", name.as_str()));
    }
    for (k, v) in params {
        encode::parameter_status(&mut io.wbuf, k.as_bytes(), v.as_bytes());
    }
    encode::ready_for_query(&mut io.wbuf, TxnStatus::Idle);
    if io.flush().await.is_err() {
        return;
    }
    let mut session = Session {
        io,
        shared,
        entry: &registered.entry,
        skipping: false,
    };
    let end = session.serve().await;
    if let Some(e) = end {
        e.encode(&mut session.io.wbuf);
    }
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        let _ = session.io.flush().await;
        let _ = session.io.io.shutdown().await;
    })
    .await;
}

struct Session<'a> {
    io: MessageIo<Stream>,
    shared: &'a Arc<Shared>,
    entry: &'a ClientEntry,
    /// An extended-protocol message was refused: discard until Sync, as PostgreSQL does.
    skipping: bool,
}

/// What ends a console session besides the client leaving: the proxy's shutdown or a
/// protocol error (a FATAL the client is sent).
type End = Option<ClientError>;

impl Session<'_> {
    async fn serve(&mut self) -> End {
        let limit = self.shared.topology.load().limits.max_message_bytes;
        loop {
            let msg = tokio::select! {
                m = self.io.read_message(limit) => m,
                _ = self.shared.drain.cancelled() => return Some(shutting_down()),
            };
            let msg = match msg {
                Ok(m) => m,
                Err(WireError::Frame(e)) => {
                    return Some(ClientError::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        e.to_string(),
                    ))
                }
                Err(_) => return None,
            };
            self.entry.set_state(ClientState::Active, Ordering::Relaxed);
            let go_on = self.on_message(&msg).await;
            self.entry.set_state(ClientState::Idle, Ordering::Relaxed);
            match go_on {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(e),
            }
            if self.io.flush().await.is_err() {
                return None;
            }
        }
    }

    /// Handles one client message; `Ok(false)`: the client said goodbye.
    async fn on_message(&mut self, msg: &[u8]) -> Result<bool, ClientError> {
        let out = &mut self.io.wbuf;
        match msg[0] {
            tag::QUERY => {
                let body = frame::body(msg);
                let text = String::from_utf8_lossy(body.strip_suffix(&[0]).unwrap_or(body));
                self.query(&text).await?;
                encode::ready_for_query(&mut self.io.wbuf, TxnStatus::Idle);
            }
            tag::TERMINATE => return Ok(false),
            tag::SYNC => {
                self.skipping = false;
                encode::ready_for_query(out, TxnStatus::Idle);
            }
            tag::PARSE | tag::BIND | tag::DESCRIBE | tag::EXECUTE | tag::CLOSE | tag::FLUSH => {
                if !self.skipping {
                    self.skipping = true;
                    extended_protocol().encode(out);
                }
            }
            tag::FUNCTION_CALL => {
                extended_protocol().encode(out);
                encode::ready_for_query(out, TxnStatus::Idle);
            }
            other => {
                return Err(ClientError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "unexpected message {:?} on the admin console",
                        other as char
                    ),
                ))
            }
        }
        Ok(true)
    }

    /// Runs the commands of one Query in order; the first error ends it (as in PostgreSQL, the
    /// rest do not run). Nothing runs when any of them is not a valid command.
    async fn query(&mut self, text: &str) -> Result<(), ClientError> {
        let commands = match parse(text) {
            Ok(c) => c,
            Err(SyntaxError(message)) => {
                ClientError::error(sqlstate::SYNTAX_ERROR, message)
                    .with_hint("SHOW HELP lists the console's commands")
                    .encode(&mut self.io.wbuf);
                return Ok(());
            }
        };
        if commands.is_empty() {
            encode::empty_query_response(&mut self.io.wbuf);
        }
        for command in &commands {
            tracing::info!(?command, "admin console command");
            let done = act::run(command, self.shared, &mut self.io).await;
            match done {
                Ok(act::Done { table, notices }) => {
                    for n in notices {
                        encode::notice_response(&mut self.io.wbuf, "NOTICE", "00000", &n);
                    }
                    match table {
                        Some(t) => t.encode(&mut self.io.wbuf, command.tag()),
                        None => encode::command_complete(&mut self.io.wbuf, command.tag()),
                    }
                }
                Err(act::Failed::Client(e)) => {
                    tracing::info!(code = %e.code, message = %e.message, "admin console command failed");
                    e.encode(&mut self.io.wbuf);
                    return Ok(());
                }
                Err(act::Failed::Gone) => return Err(shutting_down()),
            }
            // Long answers go out as they are made.
            if self.io.wbuf.len() > 64 * 1024 {
                let io = &mut self.io;
                io.io.write_all(&io.wbuf).await.map_err(gone)?;
                io.wbuf.clear();
            }
        }
        Ok(())
    }
}

fn gone(e: std::io::Error) -> ClientError {
    ClientError::fatal(sqlstate::CONNECTION_FAILURE, e.to_string())
}

fn shutting_down() -> ClientError {
    ClientError::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        "terminating connection because pgmeridian is shutting down",
    )
}

fn extended_protocol() -> ClientError {
    ClientError::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "the pgmeridian admin console supports only the simple query protocol",
    )
    .with_hint("send console commands as plain queries (psql does; drivers: simple_query, or a 'simple' query mode)")
}

/// Reads whatever the client sends while a command waits (PAUSE), keeping it for later:
/// `false` once the client is gone. Stops reading (but stays pending) past 1 MiB.
pub(crate) async fn client_still_there(io: &mut MessageIo<Stream>) -> bool {
    if io.rbuf.len() > 1 << 20 {
        return std::future::pending().await;
    }
    let MessageIo {
        io: stream, rbuf, ..
    } = io;
    matches!(stream.read_buf(rbuf).await, Ok(n) if n > 0)
}
