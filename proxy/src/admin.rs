//! The admin plane: `/metrics`, `/healthz`, `/readyz`, `/config`.
//!
//! Its own listener and its own runtime, so a saturated data plane does not
//! make the agent look dead to the kubelet, and app traffic can never reach
//! these endpoints through the app port.

use crate::config::redacted_view;
use crate::state::Shared;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Answer one admin request.
pub fn handle(shared: &Shared, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    match path {
        "/metrics" => {
            let mut text = shared.metrics.render();
            let counters = shared
                .agent
                .as_ref()
                .map(|a| a.counters())
                .unwrap_or_default();
            text.push_str(&crate::metrics::render_kernel_counters(&counters));
            reply(StatusCode::OK, "text/plain; version=0.0.4", text)
        }
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" => {
            let pending = shared.readiness.pending();
            if pending.is_empty() {
                reply(StatusCode::OK, "text/plain", "ready\n")
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: waiting for {}\n", pending.join(", ")),
                )
            }
        }
        "/config" => {
            let st = shared.state.load();
            let last_error = shared
                .last_reload_error
                .lock()
                .map(|g| g.clone())
                .unwrap_or(None);
            let v = serde_json::json!({
                "revision": st.revision.0,
                "path": st.loaded.path,
                "last_reload_error": last_error,
                "config": redacted_view(&st.loaded.config),
            });
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&v).unwrap_or_default(),
            )
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serve the admin plane until `stop` flips to true.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = stop.changed() => return Ok(()),
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let resp = handle(&shared, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Bind the admin listener (std, so binding errors surface before start-up continues).
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}
