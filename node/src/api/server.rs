//! The API's HTTP server: the router served by hyper with the limits a node open to a whole
//! household needs against slow or greedy clients. Headers must arrive within
//! [`HEADER_TIMEOUT`], bodies within [`BODY_TIMEOUT`] (and a declared size over the limit is
//! refused before a byte of it is read), and one address holds at most
//! [`MAX_CONNECTIONS_PER_ADDR`] connections at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::ApiError;
use crate::logs::Throttle;

/// Longest wait for a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a request's whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request body.
pub const MAX_BODY: usize = 2 << 20;
/// Most connections one client address holds at once.
pub const MAX_CONNECTIONS_PER_ADDR: usize = 64;

/// Serves `app` on `listener` until `stop` turns true; connections then finish their request.
pub async fn serve(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    let open: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    let mut refusals = Throttle::new(Duration::from_secs(10));
    loop {
        if *stop.borrow() {
            return;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: wait a little instead of spinning.
                tracing::warn!(error = %e, "cannot accept an API connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(slot) = Slot::take(&open, addr.ip()) else {
            if let Some(before) = refusals.allow(Instant::now()) {
                tracing::warn!(
                    from = %addr,
                    limit = MAX_CONNECTIONS_PER_ADDR,
                    more_since_last_logged = before,
                    "refused an API connection: that address holds too many"
                );
            }
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::select! {
                _ = conn.as_mut() => return,
                () = stopped => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
}

/// One open connection of an address, counted until dropped.
struct Slot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Slot> {
        let mut counts = open.lock().expect("connections lock");
        let n = counts.entry(ip).or_default();
        if *n >= MAX_CONNECTIONS_PER_ADDR {
            return None;
        }
        *n += 1;
        Some(Slot {
            open: open.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().expect("connections lock");
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Reads a request's body before its handler runs: a declared size over [`MAX_BODY`] is
/// refused at once, and a body that does not arrive within [`BODY_TIMEOUT`] ends the request.
pub async fn bounded_body(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are at most {} bytes", MAX_BODY),
        )
        .into_response()
    };
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => too_large(),
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    }
}
