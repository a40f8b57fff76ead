//! A client's startup phase: SSLRequest/GSSENCRequest negotiation, CancelRequest forwarding,
//! StartupMessage, authentication, cluster lookup (or the admin console, for admin users) and
//! the first backend login. Ends with the client holding AuthenticationOk, ParameterStatus,
//! BackendKeyData and ReadyForQuery.

use std::net::SocketAddr;

use bytes::BytesMut;

use pgwire::messages::startup::Authentication;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::app::Shared;
use crate::auth::{self, AuthError};
use crate::classify::ClientEncoding;
use crate::error::{sqlstate, ClientError, ErrorKind};
use crate::geo::geoip::Lookup;
use crate::geo::{self, ClientLocation};
use crate::protocol::backend::TxnStatus;
use crate::protocol::encode;
use crate::protocol::startup::StartupPacket;
use crate::proxy_protocol;
use crate::stream::Stream;
use crate::topology::Topology;
use crate::wire::{MessageIo, WireError};

/// A session past its startup phase, ready for its engine.
pub struct Established {
    pub client: MessageIo<Stream>,
    pub start: super::engine::Start,
    /// The client's address (after PROXY protocol).
    pub addr: SocketAddr,
}

pub enum Outcome {
    Session(Box<Established>),
    /// An admin user authenticated for the console's database.
    Console(Box<crate::console::Login>),
    /// A CancelRequest was handled, or the client left during startup.
    Closed,
    /// Refused with this error, which still has to be written to `client`.
    Refused(MessageIo<Stream>, ClientError),
}

fn protocol_violation(msg: impl Into<String>) -> ClientError {
    ClientError::fatal(sqlstate::PROTOCOL_VIOLATION, msg)
}

/// `early`: bytes already read after a PROXY header; `client`: the real client address.
pub async fn handshake(
    tcp: TcpStream,
    early: BytesMut,
    client: SocketAddr,
    shared: &Shared,
) -> Outcome {
    // The connection's own peer (a balancer, another instance, or the client itself).
    let via = tcp.peer_addr().ok().map(|a| a.ip());
    let mut io = MessageIo::new(Stream::Plain(tcp));
    io.rbuf.unsplit(early);
    let (minor, mut params) = loop {
        let packet = match io.read_startup().await {
            Ok(p) => p,
            Err(WireError::Startup(_)) if proxy_protocol::looks_like_header(&io.rbuf) => {
                return Outcome::Refused(
                    io,
                    protocol_violation(format!(
                        "PROXY protocol header from {}, which is not in proxy_protocol.trusted",
                        client.ip()
                    ))
                    .with_kind(ErrorKind::ProxyProtocol),
                );
            }
            Err(WireError::Startup(e)) if e.closes_silently() => {
                tracing::debug!(error = %e, "closing a connection that did not send a startup packet");
                return Outcome::Closed;
            }
            Err(WireError::Startup(e)) => {
                return Outcome::Refused(io, ClientError::fatal(e.sqlstate(), e.to_string()))
            }
            Err(e) => {
                tracing::debug!(error = %e, "client left during startup");
                return Outcome::Closed;
            }
        };
        match packet {
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if io.io.is_tls() => {
                return Outcome::Refused(
                    io,
                    protocol_violation("encryption was already negotiated"),
                );
            }
            // Anything sent after the request but before our answer would bypass encryption.
            StartupPacket::SslRequest | StartupPacket::GssEncRequest if !io.rbuf.is_empty() => {
                return Outcome::Refused(
                    io,
                    protocol_violation("received unencrypted data after an encryption request"),
                );
            }
            StartupPacket::SslRequest => match &shared.client_tls {
                Some(tls) => match start_tls(io, &tls.acceptor).await {
                    Some(upgraded) => io = upgraded,
                    None => return Outcome::Closed,
                },
                None => {
                    io.wbuf.extend_from_slice(b"N");
                    if io.flush().await.is_err() {
                        return Outcome::Closed;
                    }
                }
            },
            StartupPacket::GssEncRequest => {
                io.wbuf.extend_from_slice(b"N");
                if io.flush().await.is_err() {
                    return Outcome::Closed;
                }
            }
            StartupPacket::Cancel { pid, key } => {
                crate::cancel::forward::handle(shared, pid, &key, via).await;
                return Outcome::Closed;
            }
            StartupPacket::Startup { minor, params } => break (minor, params),
        }
    };

    // We speak 3.0; tell newer clients so, and decline protocol extensions.
    let unsupported: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    if minor > 0 || !unsupported.is_empty() {
        let names: Vec<&str> = unsupported.iter().map(String::as_str).collect();
        encode::negotiate_protocol_version(&mut io.wbuf, &names);
        params.retain(|(k, _)| !k.starts_with("_pq_."));
    }
    if let Some(tls) = &shared.client_tls {
        if tls.required && !io.io.is_tls() {
            let e = ClientError::fatal(sqlstate::INVALID_AUTHORIZATION, "this proxy requires TLS")
                .with_hint("connect with sslmode=require or stronger");
            return Outcome::Refused(io, e);
        }
    }
    if params
        .iter()
        .any(|(k, v)| k == "replication" && !matches!(v.as_str(), "false" | "off" | "no" | "0"))
    {
        let e = ClientError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgmeridian",
        )
        .with_hint("connect replication clients to the primary directly");
        return Outcome::Refused(io, e);
    }
    let taken = geo::take_ours(&mut params);
    let requested = taken.location;
    let causal_token = match taken
        .causal_token
        .as_deref()
        .map(crate::causal::Token::parse)
    {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            return Outcome::Refused(
                io,
                ClientError::fatal(sqlstate::INVALID_PARAMETER_VALUE, e)
                    .with_kind(ErrorKind::ClientProtocol),
            )
        }
    };
    let Some(user_name) = param(&params, "user").map(str::to_owned) else {
        return Outcome::Refused(
            io,
            ClientError::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            )
            .with_kind(ErrorKind::ClientProtocol),
        );
    };
    let database = param(&params, "database")
        .filter(|d| !d.is_empty())
        .unwrap_or(&user_name)
        .to_owned();

    let topology = shared.topology.load_full();
    let user = topology.users.get(&user_name).cloned();
    let scram = match (&shared.client_tls, io.io.is_tls()) {
        (Some(tls), true) => &tls.scram,
        _ => &shared.scram_plain,
    };
    let iterations = topology.scram_iterations;
    match auth::authenticate(&mut io, &user_name, user.as_deref(), scram, iterations).await {
        Ok(()) => {}
        Err(AuthError::Client(e)) => return Outcome::Refused(io, e),
        Err(AuthError::Gone(e)) => {
            tracing::debug!(error = %e, "client left during authentication");
            return Outcome::Closed;
        }
    }
    let Some(user) = user else {
        return Outcome::Refused(
            io,
            ClientError::fatal(
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user_name}\""),
            ),
        );
    };
    encode::auth(&mut io.wbuf, Authentication::Ok);

    if database == crate::config::CONSOLE_DATABASE {
        if !user.admin {
            let e = ClientError::fatal(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("user \"{user_name}\" may not use the pgmeridian admin console"),
            )
            .with_hint("the console is for users with `admin: true` in the proxy configuration")
            .with_kind(ErrorKind::AuthFailed);
            return Outcome::Refused(io, e);
        }
        tracing::Span::current().record("cluster", database.as_str());
        return Outcome::Console(Box::new(crate::console::Login {
            io,
            user,
            addr: client,
            application_name: param(&params, "application_name").map(str::to_owned),
        }));
    }

    let Some(cluster) = topology.clusters.get(&database).cloned() else {
        return Outcome::Refused(
            io,
            ClientError::fatal(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{database}\" does not exist"),
            )
            .with_hint(
                "pgmeridian serves the databases named under `clusters:` in its configuration",
            ),
        );
    };
    tracing::Span::current().record("cluster", cluster.name.as_str());
    let location = match locate(shared, &topology, requested.as_ref(), client) {
        Ok(l) => l,
        Err(e) => return Outcome::Refused(io, e),
    };

    let mut settings = match super::login::startup_settings(&params) {
        Ok(s) => s,
        Err(e) => {
            return Outcome::Refused(
                io,
                ClientError::fatal(sqlstate::FEATURE_NOT_SUPPORTED, e)
                    .with_kind(ErrorKind::Unsupported),
            )
        }
    };
    // No backend login for the client: the greeting comes from the pool's cache.
    let handles = shared.session_handles();
    let greeting = super::login::greeting(
        &handles,
        &cluster,
        &user,
        &mut settings,
        topology.limits.connect_timeout,
    )
    .await;
    let reported = match greeting {
        Ok(r) => r,
        Err(e) => return Outcome::Refused(io, e),
    };
    let cancel = shared.cancels.register();
    let client_encoding = reported
        .iter()
        .find(|(k, _)| k == b"client_encoding")
        .and_then(|(_, v)| ClientEncoding::from_name(&String::from_utf8_lossy(v)))
        .unwrap_or_default();
    for (k, v) in &reported {
        encode::parameter_status(&mut io.wbuf, k, v);
    }
    encode::backend_key_data(&mut io.wbuf, cancel.pid, cancel.key);
    encode::ready_for_query(&mut io.wbuf, TxnStatus::Idle);
    if io.flush().await.is_err() {
        return Outcome::Closed;
    }
    Outcome::Session(Box::new(Established {
        addr: client,
        client: io,
        start: super::engine::Start {
            cluster,
            topology,
            user,
            location,
            cancel,
            settings,
            client_ip: client.ip(),
            causal_token,
            client_encoding,
        },
    }))
}

/// The session's location: its startup option, else GeoIP, else the proxy's region.
fn locate(
    shared: &Shared,
    topology: &Topology,
    requested: Option<&geo::Requested>,
    client: SocketAddr,
) -> Result<ClientLocation, ClientError> {
    let found = match requested {
        Some(_) => None,
        None => {
            let lookup = shared.geoip.lookup(client.ip());
            if lookup != Lookup::Off {
                shared
                    .metrics
                    .geoip_lookups
                    .with_label_values(&[lookup.as_str()])
                    .inc();
            }
            match lookup {
                Lookup::Found(at) => Some(at),
                _ => None,
            }
        }
    };
    let location = geo::locate(requested, &topology.regions, found, topology.location)
        .map_err(|e| {
            ClientError::fatal(sqlstate::INVALID_PARAMETER_VALUE, e).with_hint(
                "use a region named under `regions:` in the proxy configuration, or pgmeridian.location=LAT,LON",
            )
        })?;
    tracing::Span::current().record("geo", location.source.as_str());
    Ok(location)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn start_tls(mut io: MessageIo<Stream>, acceptor: &TlsAcceptor) -> Option<MessageIo<Stream>> {
    io.wbuf.extend_from_slice(b"S");
    io.flush().await.ok()?;
    let Stream::Plain(tcp) = io.io else {
        return None;
    };
    match acceptor.accept(tcp).await {
        Ok(tls) => Some(MessageIo::new(Stream::Tls(Box::new(tls.into())))),
        Err(e) => {
            tracing::debug!(error = %e, "client TLS handshake failed");
            None
        }
    }
}
