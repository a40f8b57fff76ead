//! Opening an authenticated connection to one backend node: TCP, optional TLS, StartupMessage,
//! SCRAM/MD5/cleartext/trust login; collects ParameterStatus and BackendKeyData. No routing.
//!
//! The server picks the authentication method, and on a path that is not `tls: verify-full`
//! anything in between can pick it for the server. So the proxy answers only what the node's
//! `require_auth` lists (default: SCRAM, or no authentication): a request for a cleartext or
//! MD5 password from a node that does not list it ends the login before anything is sent.

pub mod scram;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::BackendAuth;
use crate::error::{sqlstate, ClientError, ErrorKind};
use crate::protocol::backend::ErrorFields;
use crate::protocol::{frame, tag::backend as btag};
use crate::server::TcpOptions;
use crate::stream::Stream;
use crate::telemetry::escape;
use crate::topology::{BackendTlsSpec, NodeSpec, UserSpec};
use crate::wire::{MessageIo, WireError};

/// Backend messages during login are small; anything bigger is not PostgreSQL talking.
const LOGIN_MESSAGE_LIMIT: usize = 1 << 20;

/// A logged-in backend connection, ready for queries.
pub struct BackendConn {
    pub node: Arc<NodeSpec>,
    /// The stream, plus any bytes the server sent after its first ReadyForQuery.
    pub io: MessageIo<Stream>,
    /// The backend's own cancel key (protocol 3.0: a 4-byte key).
    pub pid: i32,
    pub key: i32,
    /// ParameterStatus (name, value) pairs reported during login, in order.
    pub params: Vec<(Vec<u8>, Vec<u8>)>,
}

impl BackendConn {
    /// Sends `request` and collects the answer through ReadyForQuery.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Vec<BytesMut>, WireError> {
        self.io.exchange(request).await
    }
}

/// Displayed (in logs and `/status`) with the server's own words escaped: a hostile or echoing
/// server must not be able to start a forged log line.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to {node}: {}", escape(.reason))]
    Unreachable { node: String, reason: String },
    #[error("timed out connecting to {node} after {after:?}")]
    Timeout { node: String, after: Duration },
    #[error("{node} refused the login: {} ({})", escape(&.fields.message), escape(&.fields.code))]
    Rejected { node: String, fields: ErrorFields },
    #[error("protocol error from {node}: {}", escape(.reason))]
    Protocol { node: String, reason: String },
    #[error(
        "{node} asked for {}, which its require_auth does not allow (allowed: {})",
        asked_for(*.asked),
        .allowed.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")
    )]
    AuthNotAllowed {
        node: String,
        asked: BackendAuth,
        allowed: Vec<BackendAuth>,
    },
}

/// What a server asked for, in words.
fn asked_for(method: BackendAuth) -> &'static str {
    match method {
        BackendAuth::ScramSha256 => "SCRAM-SHA-256 authentication",
        BackendAuth::Md5 => "an MD5 password",
        BackendAuth::Password => "a cleartext password",
        BackendAuth::None => "no authentication (trust)",
    }
}

impl ConnectError {
    /// Whether the node itself may be down or unreachable (worth a probe), rather than
    /// answering and refusing this login (a setting, a role or the auth method).
    pub fn suggests_node_failure(&self) -> bool {
        !matches!(
            self,
            ConnectError::Rejected { .. } | ConnectError::AuthNotAllowed { .. }
        )
    }

    /// What the client is told: the server's own SQLSTATE when it refused us, else 08006/08001.
    pub fn to_client(&self) -> ClientError {
        match self {
            ConnectError::Rejected { node, fields } => {
                let code = if fields.code.is_empty() {
                    sqlstate::CONNECTION_FAILURE
                } else {
                    &fields.code
                };
                ClientError::fatal(
                    code.to_owned(),
                    format!("backend {node}: {}", fields.message),
                )
                .with_kind(ErrorKind::BackendConnect)
            }
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } => {
                ClientError::fatal(sqlstate::CONNECTION_FAILURE, self.to_string())
            }
            ConnectError::Protocol { .. } => {
                ClientError::fatal(sqlstate::CLIENT_UNABLE_TO_CONNECT, self.to_string())
            }
            // A connection failure, not the client's own authentication (28xxx would read as
            // "your password is wrong").
            ConnectError::AuthNotAllowed { .. } => {
                ClientError::fatal(sqlstate::CONNECTION_FAILURE, self.to_string())
                    .with_hint("if the server is meant to ask for this, add the method to the node's require_auth in the proxy configuration")
                    .with_kind(ErrorKind::BackendConnect)
            }
        }
    }
}

/// How a backend connection is opened: the time it may take (TCP, TLS and login together) and
/// the socket's keepalive settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    pub timeout: Duration,
    pub tcp: TcpOptions,
}

impl From<&crate::config::Limits> for ConnectOptions {
    /// `limits.connect_timeout`, `limits.tcp_keepalive` and `limits.tcp_user_timeout`.
    fn from(l: &crate::config::Limits) -> ConnectOptions {
        ConnectOptions {
            timeout: l.connect_timeout,
            tcp: l.into(),
        }
    }
}

/// Connects to `node` as `user`, passing the client's startup parameters along, with the
/// default keepalive settings ([`connect_with`] takes the configured ones).
pub async fn connect(
    node: &Arc<NodeSpec>,
    user: &UserSpec,
    client_params: &[(String, String)],
    timeout: Duration,
) -> Result<BackendConn, ConnectError> {
    let options = ConnectOptions {
        timeout,
        tcp: TcpOptions::default(),
    };
    connect_with(node, user, client_params, &options).await
}

/// [`connect`] with every setting given.
pub async fn connect_with(
    node: &Arc<NodeSpec>,
    user: &UserSpec,
    client_params: &[(String, String)],
    options: &ConnectOptions,
) -> Result<BackendConn, ConnectError> {
    let login = connect_inner(node, user, client_params, options.tcp);
    match tokio::time::timeout(options.timeout, login).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            node: node.to_string(),
            after: options.timeout,
        }),
    }
}

/// Opens the TCP connection (default keepalive settings) and negotiates TLS as the node's
/// mode says.
pub async fn open_stream(node: &NodeSpec) -> Result<Stream, ConnectError> {
    open_stream_with(node, TcpOptions::default()).await
}

/// [`open_stream`] with the socket's keepalive settings given.
pub async fn open_stream_with(
    node: &NodeSpec,
    tcp_options: TcpOptions,
) -> Result<Stream, ConnectError> {
    let unreachable = |reason: String| ConnectError::Unreachable {
        node: node.to_string(),
        reason,
    };
    let mut tcp = TcpStream::connect((node.host.as_str(), node.port))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| unreachable(e.to_string()))?;
    crate::server::tune_socket(&tcp, tcp_options).map_err(|e| unreachable(e.to_string()))?;
    let (config, name, required) = match &node.tls {
        BackendTlsSpec::Disable => return Ok(Stream::Plain(tcp)),
        BackendTlsSpec::Prefer(c, n) => (c, n, false),
        BackendTlsSpec::Require(c, n) => (c, n, true),
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    tcp.write_all(&buf)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = tcp
        .read_u8()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    match answer {
        b'S' => tls_handshake(tcp, config, name).await.map_err(unreachable),
        b'N' if !required => Ok(Stream::Plain(tcp)),
        b'N' => Err(unreachable(
            "server does not support TLS, and this node requires it".into(),
        )),
        other => Err(ConnectError::Protocol {
            node: node.to_string(),
            reason: format!("unexpected answer {:?} to SSLRequest", other as char),
        }),
    }
}

async fn tls_handshake(
    tcp: TcpStream,
    config: &Arc<ClientConfig>,
    name: &ServerName<'static>,
) -> Result<Stream, String> {
    let tls = TlsConnector::from(config.clone())
        .connect(name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    Ok(Stream::Tls(Box::new(tls.into())))
}

async fn connect_inner(
    node: &Arc<NodeSpec>,
    user: &UserSpec,
    client_params: &[(String, String)],
    tcp_options: TcpOptions,
) -> Result<BackendConn, ConnectError> {
    let stream = open_stream_with(node, tcp_options).await?;
    let mut io = MessageIo::new(stream);
    let protocol = |reason: String| ConnectError::Protocol {
        node: node.to_string(),
        reason,
    };
    let io_err = |e: WireError| ConnectError::Unreachable {
        node: node.to_string(),
        reason: e.to_string(),
    };

    let mut params: Vec<(&str, &str)> = vec![("user", &user.name), ("database", &node.database)];
    params.extend(
        client_params
            .iter()
            .filter(|(k, _)| {
                !matches!(k.as_str(), "user" | "database") && !k.starts_with("pgmeridian.")
            })
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    frontend::startup_message(params.iter().copied(), &mut io.wbuf)
        .map_err(|e| protocol(e.to_string()))?;
    io.flush().await.map_err(|e| io_err(e.into()))?;

    let allowed = node.configured.require_auth();
    let max_iterations = node.configured.max_scram_iterations();
    let permit = |method: BackendAuth| {
        if allowed.contains(&method) {
            Ok(())
        } else {
            Err(ConnectError::AuthNotAllowed {
                node: node.to_string(),
                asked: method,
                allowed: allowed.to_vec(),
            })
        }
    };
    // The method the server asked for, once it has.
    let mut asked: Option<BackendAuth> = None;
    let mut scram: Option<scram::ScramClient> = None;
    let mut conn_params = Vec::new();
    let mut key = None;
    loop {
        let msg = io.read_message(LOGIN_MESSAGE_LIMIT).await.map_err(io_err)?;
        let body = frame::body(&msg);
        match msg[0] {
            btag::AUTHENTICATION => {
                let (code, data) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| protocol("short authentication message".into()))?;
                match i32::from_be_bytes(*code) {
                    0 if scram.is_some() => {
                        return Err(protocol(
                            "server accepted the login without proving it knows the password (no SCRAM final message)".into(),
                        ))
                    }
                    0 => {
                        if asked.is_none() {
                            permit(BackendAuth::None)?;
                        }
                    }
                    3 => {
                        permit(BackendAuth::Password)?;
                        asked = Some(BackendAuth::Password);
                        frontend::password_message(user.password.as_bytes(), &mut io.wbuf)
                            .map_err(|e| protocol(e.to_string()))?
                    }
                    5 => {
                        permit(BackendAuth::Md5)?;
                        asked = Some(BackendAuth::Md5);
                        let salt: [u8; 4] = data
                            .try_into()
                            .map_err(|_| protocol("bad MD5 salt".into()))?;
                        let hash = postgres_protocol::authentication::md5_hash(
                            user.name.as_bytes(),
                            user.password.as_bytes(),
                            salt,
                        );
                        frontend::password_message(hash.as_bytes(), &mut io.wbuf)
                            .map_err(|e| protocol(e.to_string()))?;
                    }
                    10 => {
                        permit(BackendAuth::ScramSha256)?;
                        asked = Some(BackendAuth::ScramSha256);
                        if !sasl_mechanisms(data).any(|m| m == b"SCRAM-SHA-256") {
                            return Err(protocol(
                                "server offers no SASL mechanism we support".into(),
                            ));
                        }
                        let s = scram::ScramClient::new(
                            &pgwire::api::auth::sasl::scram::random_nonce(),
                        );
                        frontend::sasl_initial_response(
                            "SCRAM-SHA-256",
                            &s.client_first(),
                            &mut io.wbuf,
                        )
                        .map_err(|e| protocol(e.to_string()))?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| protocol("SASLContinue before SASL".into()))?;
                        let first = s
                            .parse_server_first(data, max_iterations)
                            .map_err(|e| protocol(format!("SCRAM: {e}")))?;
                        let salted = match user.backend_scram.get(&first.salt, first.iterations) {
                            Some(salted) => salted,
                            None => {
                                // PBKDF2 off the session thread: other sessions keep moving. If
                                // this login is abandoned (its connect timed out), the flag
                                // stops the derivation too.
                                let (password, salt, i) =
                                    (user.password.clone(), first.salt.clone(), first.iterations);
                                let stop = StopOnDrop::default();
                                let flag = stop.0.clone();
                                let salted = tokio::task::spawn_blocking(move || {
                                    scram::salt_password_unless_stopped(&password, &salt, i, &flag)
                                })
                                .await
                                .map_err(|e| protocol(format!("SCRAM: {e}")))?
                                .ok_or_else(|| protocol("SCRAM: key derivation stopped".into()))?;
                                drop(stop);
                                user.backend_scram.insert(&first.salt, i, salted);
                                salted
                            }
                        };
                        let response = s.client_final(data, &first, salted);
                        frontend::sasl_response(&response, &mut io.wbuf)
                            .map_err(|e| protocol(e.to_string()))?;
                    }
                    12 => {
                        let s = scram
                            .take()
                            .ok_or_else(|| protocol("SASLFinal before SASL".into()))?;
                        s.verify_server_final(data)
                            .map_err(|e| protocol(format!("SCRAM server signature: {e}")))?;
                    }
                    other => {
                        return Err(protocol(format!(
                            "unsupported authentication method {other}"
                        )))
                    }
                }
                io.flush().await.map_err(|e| io_err(e.into()))?;
            }
            btag::ERROR_RESPONSE => {
                return Err(ConnectError::Rejected {
                    node: node.to_string(),
                    fields: ErrorFields::parse(body).unwrap_or_default(),
                })
            }
            btag::PARAMETER_STATUS => {
                if let Some((k, v)) = crate::protocol::backend::parameter_status(body) {
                    conn_params.push((k.to_vec(), v.to_vec()));
                }
            }
            btag::BACKEND_KEY_DATA => {
                let (pid, k) = body
                    .split_first_chunk::<4>()
                    .ok_or_else(|| protocol("short BackendKeyData".into()))?;
                let k: [u8; 4] = k
                    .try_into()
                    .map_err(|_| protocol("cancel key is not 4 bytes".into()))?;
                key = Some((i32::from_be_bytes(*pid), i32::from_be_bytes(k)));
            }
            btag::READY_FOR_QUERY => break,
            btag::NOTICE_RESPONSE | btag::NEGOTIATE_PROTOCOL_VERSION => {}
            other => {
                return Err(protocol(format!(
                    "unexpected message {:?} during login",
                    other as char
                )))
            }
        }
    }
    let (pid, key) = key.unwrap_or((0, 0));
    Ok(BackendConn {
        node: node.clone(),
        io,
        pid,
        key,
        params: conn_params,
    })
}

/// Sets its flag when dropped: a blocking task watching the flag stops once the future that
/// waits for it is gone.
#[derive(Default)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn sasl_mechanisms(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (name, rest) = frame::read_cstr(data)?;
        data = rest;
        (!name.is_empty()).then_some(name)
    })
}

/// Sends a CancelRequest for (`pid`, `key`) to `node` on a fresh connection.
pub async fn send_cancel(
    node: &NodeSpec,
    pid: i32,
    key: i32,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let work = async {
        let mut stream = open_stream(node).await?;
        let mut buf = BytesMut::with_capacity(16);
        crate::protocol::encode::cancel_request(&mut buf, pid, &key.to_be_bytes());
        let fail = |e: std::io::Error| ConnectError::Unreachable {
            node: node.to_string(),
            reason: e.to_string(),
        };
        stream.write_all(&buf).await.map_err(fail)?;
        stream.flush().await.map_err(fail)?;
        // The server closes the connection once it has acted on the request.
        let mut sink = [0u8; 64];
        while stream.read(&mut sink).await.map_err(fail)? > 0 {}
        Ok(())
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Timeout {
                node: node.to_string(),
                after: timeout,
            })
        })
}

#[cfg(test)]
mod tests;
