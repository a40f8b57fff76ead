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
mod tests {
    use super::*;
    use crate::config::{AuthMethod, Region};
    use crate::topology::ConfiguredRole;
    use tokio::net::TcpListener;

    fn node(addr: std::net::SocketAddr, require_auth: Option<Vec<BackendAuth>>) -> Arc<NodeSpec> {
        node_with(addr, |n| n.require_auth = require_auth)
    }

    fn node_with(
        addr: std::net::SocketAddr,
        f: impl FnOnce(&mut crate::config::Node),
    ) -> Arc<NodeSpec> {
        let mut n = NodeSpec::plain(
            "app",
            ConfiguredRole::Primary,
            "127.0.0.1",
            addr.port(),
            "here",
            Region { lat: 0.0, lon: 0.0 },
        );
        f(&mut n.configured);
        Arc::new(n)
    }

    fn user() -> UserSpec {
        UserSpec {
            name: "app".into(),
            password: "the-password".into(),
            auth: AuthMethod::ScramSha256,
            scram_salt: vec![0; 16],
            scram_salted_password: vec![0; 32],
            backend_scram: Default::default(),
            admin: false,
        }
    }

    fn auth_request(code: i32, data: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(8 + data.len() as u32).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    /// A server that takes one login: reads the startup packet, lets `answer` reply (it gets
    /// the socket), then collects whatever the proxy sends until it closes.
    async fn fake_server<F, Fut>(
        answer: F,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = TcpStream> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let len = s.read_u32().await.unwrap();
            let mut startup = vec![0; len as usize - 4];
            s.read_exact(&mut startup).await.unwrap();
            let mut s = answer(s).await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
            rest
        });
        (addr, task)
    }

    /// A server that asks for `request` and nothing else.
    async fn asking(request: Vec<u8>) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        fake_server(move |mut s| async move {
            s.write_all(&request).await.unwrap();
            s
        })
        .await
    }

    #[tokio::test]
    async fn backend_sockets_get_the_keepalive_settings() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let n = node_with(listener.local_addr().unwrap(), |n| {
            n.tls = crate::config::BackendTls::Disable
        });
        let tcp = TcpOptions {
            keepalive: Duration::from_secs(7),
            user_timeout: Duration::from_secs(11),
        };
        let Stream::Plain(s) = open_stream_with(&n, tcp).await.unwrap() else {
            panic!("a plain stream for tls: disable");
        };
        let sock = socket2::SockRef::from(&s);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(11))
        );
        let Stream::Plain(s) = open_stream(&n).await.unwrap() else {
            panic!("plain");
        };
        let sock = socket2::SockRef::from(&s);
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            Duration::from_secs(30),
            "the default"
        );
    }

    #[tokio::test]
    async fn passwords_are_not_sent_to_servers_that_may_not_ask_for_them() {
        for (request, method) in [
            (auth_request(3, b""), BackendAuth::Password),
            (auth_request(5, b"salt"), BackendAuth::Md5),
        ] {
            let (addr, server) = asking(request).await;
            let err = connect(&node(addr, None), &user(), &[], Duration::from_secs(5))
                .await
                .err()
                .expect("refused");
            match &err {
                ConnectError::AuthNotAllowed { asked, .. } => assert_eq!(*asked, method),
                other => panic!("{other:?}"),
            }
            let told = err.to_client();
            assert_eq!(told.code, "08006", "{told:?}");
            assert!(told.message.contains("app/primary (127.0.0.1:"), "{told:?}");
            assert!(told.message.contains("require_auth"), "{told:?}");
            assert_eq!(
                server.await.unwrap(),
                b"",
                "nothing was sent after the startup packet"
            );
        }
    }

    #[tokio::test]
    async fn a_node_that_lists_a_method_gets_the_password_that_way() {
        let (addr, server) = asking(auth_request(3, b"")).await;
        let allowed = node(addr, Some(vec![BackendAuth::Password]));
        let err = connect(&allowed, &user(), &[], Duration::from_millis(300))
            .await
            .err()
            .expect("the fake server never finishes the login");
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
        let sent = server.await.unwrap();
        assert_eq!(sent[0], b'p');
        assert!(sent.windows(12).any(|w| w == b"the-password"));
    }

    #[tokio::test]
    async fn trust_is_allowed_by_default_and_can_be_refused() {
        let mut ok = auth_request(0, b"");
        ok.extend_from_slice(b"Z\0\0\0\x05I");
        let (addr, _server) = asking(ok.clone()).await;
        connect(&node(addr, None), &user(), &[], Duration::from_secs(5))
            .await
            .expect("trust is allowed by default");
        let (addr, _server) = asking(ok).await;
        let strict = node(addr, Some(vec![BackendAuth::ScramSha256]));
        let err = connect(&strict, &user(), &[], Duration::from_secs(5))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(
                err,
                ConnectError::AuthNotAllowed {
                    asked: BackendAuth::None,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    /// Answers SASL with a server-first message carrying `iterations`.
    async fn scram_server(
        iterations: u32,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        fake_server(move |mut s| async move {
            s.write_all(&auth_request(10, b"SCRAM-SHA-256\0\0"))
                .await
                .unwrap();
            let mut io = MessageIo::new(s);
            let initial = io.read_message(1 << 16).await.unwrap();
            let text = String::from_utf8_lossy(frame::body(&initial)).into_owned();
            let nonce = text.split("r=").nth(1).unwrap().to_owned();
            let first = format!("r={nonce}server,s=c2FsdHNhbHQ=,i={iterations}");
            io.wbuf
                .extend_from_slice(&auth_request(11, first.as_bytes()));
            io.flush().await.unwrap();
            io.io
        })
        .await
    }

    #[tokio::test]
    async fn iteration_counts_are_capped_and_abandoned_derivations_stop() {
        let (addr, _server) = scram_server(scram::DEFAULT_MAX_ITERATIONS + 1).await;
        let started = std::time::Instant::now();
        let err = connect(&node(addr, None), &user(), &[], Duration::from_secs(5))
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains("max_scram_iterations"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));

        // A node allowed a huge count: the connect timeout ends the derivation as well.
        let (addr, _server) = scram_server(u32::MAX).await;
        let generous = node_with(addr, |n| n.max_scram_iterations = Some(u32::MAX));
        let err = connect(&generous, &user(), &[], Duration::from_millis(300))
            .await
            .err()
            .expect("timed out");
        assert!(matches!(err, ConnectError::Timeout { .. }), "{err:?}");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while scram::RUNNING.load(Ordering::Relaxed) > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the abandoned derivation is still running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
