//! The HTTP server of the dashboard and of `--metrics`: `/metrics` (Prometheus text), and for
//! the dashboard the page, its embedded assets, `/events` (server-sent events carrying the
//! [`feed`](crate::observe::feed) views) and `POST /api/cancel/{task_id}`.
//!
//! Cancel is offered only when the dashboard was started with a platform's config: it signs
//! the cancel with that platform's key, and the status service refuses anyone but the task's
//! delegator. The request must carry the [`CANCEL_HEADER`] header, which a cross-site form
//! cannot send without a CORS preflight this server never grants, and name the server by an
//! address, not a host name that another site could rebind to it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::Stream;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::delegation::status;
use crate::observe::feed::Feed;
use crate::protocol::envelope::Signer;
use crate::protocol::task::TaskId;

/// The page, its script and the chart library (Chart.js 4.6.1, MIT, from the npm registry),
/// embedded so that the binary serves them with no network and no build step.
const INDEX_HTML: &str = include_str!("assets/index.html");
const DASHBOARD_JS: &str = include_str!("assets/dashboard.js");
const CHART_JS: &str = include_str!("assets/chart-4.6.1.umd.min.js");

/// The header a cancel request must carry (any value).
pub const CANCEL_HEADER: &str = "x-sagefed-cancel";
/// How often an idle event stream sends a comment, so that proxies keep it open.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often the metrics recorder's histograms are maintained.
const METRICS_UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {cause}; pass another address")]
    Bind { addr: String, cause: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Who the dashboard cancels as: a platform's NATS connection and signing key.
#[derive(Clone)]
pub struct Canceller {
    pub client: async_nats::Client,
    pub signer: Signer,
}

#[derive(Clone)]
struct Dashboard {
    feed: Arc<Feed>,
    canceller: Option<Canceller>,
}

/// Binds `addr` (`127.0.0.1:8080`, or port 0 for any free one).
pub async fn bind(addr: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|cause| ServeError::Bind {
        addr: addr.to_owned(),
        cause,
    })
}

/// `/metrics` alone, for `worker --metrics` and `ledger serve --metrics`.
pub fn metrics_router(handle: PrometheusHandle) -> Router {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(METRICS_UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                    handle.render(),
                )
            }
        }),
    )
}

/// The dashboard and `/metrics`.
pub fn dashboard_router(feed: Feed, canceller: Option<Canceller>, handle: PrometheusHandle) -> Router {
    let state = Dashboard {
        feed: Arc::new(feed),
        canceller,
    };
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route(
            "/assets/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", DASHBOARD_JS) }),
        )
        .route(
            "/assets/chart.umd.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", CHART_JS) }),
        )
        .route("/events", get(events))
        .route("/api/view", get(current_view))
        .route("/api/cancel/{task_id}", post(cancel))
        .with_state(state)
        .merge(metrics_router(handle))
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

/// Whether the request's `Host` is an IP address or `localhost` (with any port). A host name
/// could be a stranger's domain rebound to this address (DNS rebinding), whose pages the
/// browser would let send the cancel header.
fn host_is_an_address(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Every view, as it is pushed: the current one first, then each new one.
async fn events(State(state): State<Dashboard>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut views = state.feed.subscribe();
    views.mark_changed();
    let stream = futures::stream::unfold(views, |mut views| async move {
        views.changed().await.ok()?;
        let json = views.borrow_and_update().clone();
        Some((Ok(Event::default().event("view").data(json.as_str())), views))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(SSE_KEEP_ALIVE))
}

/// The current view, once (for scripts and curl).
async fn current_view(State(state): State<Dashboard>) -> Response {
    let json = state.feed.subscribe().borrow().clone();
    ([(header::CONTENT_TYPE, "application/json")], json.as_str().to_owned()).into_response()
}

async fn cancel(State(state): State<Dashboard>, Path(task_id): Path<String>, headers: HeaderMap) -> Response {
    let Some(canceller) = &state.canceller else {
        return (
            StatusCode::FORBIDDEN,
            "this dashboard cancels nothing: start it with the delegating platform's config (sagefed dashboard --config F)",
        )
            .into_response();
    };
    if !headers.contains_key(CANCEL_HEADER) {
        return (StatusCode::FORBIDDEN, "a cancel must carry the x-sagefed-cancel header").into_response();
    }
    if !host_is_an_address(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "open the dashboard by its address (http://127.0.0.1:8080/) to cancel: a page under another host name could be anyone's",
        )
            .into_response();
    }
    let task_id: TaskId = match task_id.parse() {
        Ok(id) => id,
        Err(e) => return (StatusCode::BAD_REQUEST, e).into_response(),
    };
    match status::cancel_task(&canceller.client, &canceller.signer, &task_id).await {
        Ok(reply) => {
            let code = if reply.cancelled {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            (code, axum::Json(reply)).into_response()
        }
        Err(e) => (StatusCode::BAD_GATEWAY, format!("{e:#}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_addresses_and_localhost_may_cancel() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, value.parse().expect("header"));
            host_is_an_address(&headers)
        };
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "[::1]:8080",
            "192.0.2.7:80",
        ] {
            assert!(host(ok), "{ok}");
        }
        for refused in ["evil.example:8080", "evil.example", "127.0.0.1.evil.example:8080", ""] {
            assert!(!host(refused), "{refused}");
        }
        assert!(!host_is_an_address(&HeaderMap::new()));
    }
}
