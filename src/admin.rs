//! The admin HTTP listener: `/metrics` (Prometheus text), `/status` (JSON: every node's
//! configured and observed state, see `status.rs`), `/healthz` (the process is up) and
//! `/readyz` (configuration loaded and every cluster has exactly one reachable primary).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::app::Shared;
use crate::health::PrimaryView;

/// Serves admin requests until the proxy drains.
pub async fn run(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shared.hard_stop.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(respond(&shared, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match req.uri().path() {
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
