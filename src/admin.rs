//! The admin HTTP listener: `/metrics` (Prometheus text), `/status` (JSON: every node's
//! configured and observed state, see `status.rs`), `/healthz` (the process is up) and
//! `/readyz` (configuration loaded, every cluster has exactly one reachable primary, and no
//! SIGTERM received: 503 from then on, for load balancers' health checks).
//!
//! Exposed to whatever can reach `admin_listen`, so: at most `limits.max_admin_connections`
//! connections (more are closed when accepted), each request's headers within
//! `limits.admin_header_timeout`, each connection closed after [`CONNECTION_LIFETIME`] (after
//! its response in flight), and with `admin_token` set, `/metrics` and `/status` only for
//! `Authorization: Bearer TOKEN`. `/healthz` and `/readyz` say nothing secret and stay open
//! for orchestrators' probes.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use crate::app::Shared;
use crate::health::PrimaryView;

/// A connection (keep-alive included) is asked to close after this long, once its response in
/// flight is written, so that a client that stops reading cannot keep it forever.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// After that, how long the response in flight may take.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// Serves admin requests until the proxy drains.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    let open = Arc::new(AtomicUsize::new(0));
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shared.hard_stop.cancelled() => return,
        };
        let (max, header_timeout) = {
            let limits = &shared.topology.load().limits;
            (limits.max_admin_connections, limits.admin_header_timeout)
        };
        if open.load(Ordering::Relaxed) >= max {
            tracing::debug!(%peer, max, "admin connection limit reached; closing a new one");
            drop(tcp);
            continue;
        }
        let counted = crate::occupancy::Occupied::new(&open);
        let shared = shared.clone();
        tokio::spawn(async move {
            serve(tcp, shared, header_timeout).await;
            drop(counted);
        });
    }
}

async fn serve(tcp: TcpStream, shared: Arc<Shared>, header_timeout: Duration) {
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(respond(&shared, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(tcp), service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        _ = tokio::time::sleep(CONNECTION_LIFETIME) => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(CLOSING_GRACE, conn.as_mut()).await {
                Ok(ended) => ended,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = ended {
        tracing::debug!(error = %e, "admin connection ended");
    }
}

/// Whether `req` may see `/metrics` and `/status`: always without a token, else with
/// `Authorization: Bearer TOKEN` (compared in constant time).
fn authorized(token: Option<&crate::config::Secret>, req: &Request<Incoming>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    given.is_some_and(|g| crate::auth::constant_time_eq(g.as_bytes(), token.expose().as_bytes()))
}

/// The token of an `Authorization: Bearer TOKEN` value (the scheme is case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if matches!(path, "/metrics" | "/status") && !authorized(shared.admin_token.as_ref(), req) {
        let mut resp = Response::new(Full::new(Bytes::from_static(b"unauthorized\n")));
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            prometheus::TEXT_FORMAT,
            shared.metrics.render(),
        ),
        "/status" => (
            StatusCode::OK,
            "application/json",
            crate::status::render(
                &shared.topology.load(),
                &shared.health.load(),
                &shared.pools.all(),
                &shared.pauses,
            ),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" if shared.leaving.is_cancelled() || shared.drain.is_cancelled() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            b"shutting down\n".to_vec(),
        ),
        "/readyz" => {
            let health = shared.health.load();
            let topology = shared.topology.load();
            let missing: Vec<&str> = topology
                .clusters
                .keys()
                .filter(|name| {
                    !matches!(
                        health.clusters.get(*name).map(|h| h.primary_view()),
                        Some(PrimaryView::One(_))
                    )
                })
                .map(String::as_str)
                .collect();
            if missing.is_empty() {
                (StatusCode::OK, "text/plain", b"ready\n".to_vec())
            } else {
                let text = format!("no single reachable primary for: {}\n", missing.join(", "));
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    text.into_bytes(),
                )
            }
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer abc", Some("abc")),
            ("BEARER  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("abc", None),
        ] {
            assert_eq!(bearer_token(value), want, "{value:?}");
        }
    }
}
