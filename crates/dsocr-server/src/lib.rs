//! `dsocr serve`: DeepSeek-OCR behind an HTTP API and a web page.
//!
//! - `POST /v1/chat/completions`: OpenAI-compatible chat completions with `image_url` parts
//!   (data URLs), streamed as server-sent events when asked ([`chat`]).
//! - `POST /v1/ocr`: a multipart upload of an image or PDF, answered with the JSON document the
//!   CLI writes, markdown or text, or a stream of per-page events ([`ocr`]).
//! - `GET /v1/models`, `GET /health`, `GET /metrics` (Prometheus text), and the web page at `/`
//!   ([`page`]), its assets embedded in the binary.
//!
//! Every request goes through the engine's queue ([`dsocr::Engine`]): one worker owns the
//! model, a full queue answers 429 with `Retry-After`, a client that disconnects cancels its
//! request, and a request past its deadline ends with 504. The server never reads files or
//! fetches URLs named in a request. Options in ([`ServerOptions`]), events out
//! ([`ServerEvent`]): the CLI prints them.

pub mod chat;
mod error;
mod metrics;
pub mod ocr;
pub mod page;
mod submit;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dsocr::Engine;
use serde_json::json;

pub use error::ApiError;
pub use metrics::Metrics;

/// Everything `dsocr serve` can set; [`ServerOptions::default`] is the one home of its defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerOptions {
    /// Address to listen on (loopback by default: nothing outside this machine can connect).
    pub host: String,
    pub port: u16,
    /// The model's name in `/v1/models` and in answers.
    pub model_id: String,
    /// Largest request body (JSON with data URLs, or an upload), in bytes.
    pub max_body_bytes: usize,
    /// Most PDF pages one request may run.
    pub max_pages: usize,
    /// Most tokens generated per page; a request's `max_tokens` is capped to it.
    pub max_new_tokens: usize,
    /// Largest image, in pixels, judged from its header before decoding.
    pub max_image_pixels: u64,
    /// A request not done this long after it arrived (queue time included) ends with 504.
    pub timeout: Duration,
    /// With a key, every route but `/health` and the page's static files requires
    /// `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Allow cross-origin requests from this origin (`*` for any); off by default.
    pub cors_origin: Option<String>,
    /// After SIGTERM/Ctrl-C, requests in flight get this long to finish before they are
    /// cancelled.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_string(),
            port: 8000,
            model_id: "deepseek-ai/DeepSeek-OCR".to_string(),
            max_body_bytes: 50 * 1024 * 1024,
            max_pages: 200,
            max_new_tokens: dsocr::OcrOptions::official().max_new_tokens,
            max_image_pixels: 64_000_000,
            timeout: Duration::from_secs(600),
            api_key: None,
            cors_origin: None,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What the server reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    Listening {
        addr: SocketAddr,
    },
    /// A signal arrived: no new requests; those in flight get the grace period.
    ShuttingDown {
        in_flight: usize,
    },
    /// The grace period ended (or a second signal came): requests in flight are cancelled.
    Cancelling {
        in_flight: usize,
    },
    Stopped,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("--cors {origin}: not a valid origin")]
    Cors { origin: String },
    #[error("the server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler sees.
pub struct AppState {
    pub engine: Arc<Engine>,
    pub options: ServerOptions,
    pub metrics: Metrics,
    pub started: Instant,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, options: ServerOptions) -> Arc<Self> {
        Arc::new(Self { engine, options, metrics: Metrics::default(), started: Instant::now() })
    }
}

/// The routes, with auth, metrics, body limit and CORS layered on.
pub fn router(state: Arc<AppState>) -> Result<Router, ServerError> {
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/v1/ocr", post(ocr::upload))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics_text))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    let mut app = Router::new()
        .merge(api)
        .route("/health", get(health))
        .merge(page::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.options.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), count_request))
        .with_state(state.clone());
    if let Some(origin) = &state.options.cors_origin {
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let allow = if origin == "*" {
            AllowOrigin::any()
        } else {
            AllowOrigin::exact(HeaderValue::from_str(origin).map_err(|_| ServerError::Cors { origin: origin.clone() })?)
        };
        app = app.layer(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    Ok(app)
}

/// Serves `state` on `listener` until `shutdown` completes, then lets the requests in flight
/// finish within the grace period and cancels the rest.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    mut on_event: impl FnMut(ServerEvent) + Send + 'static,
) -> Result<(), ServerError> {
    let app = router(state.clone())?;
    on_event(ServerEvent::Listening { addr: listener.local_addr()? });
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<ServerEvent>();
    let engine = state.engine.clone();
    let grace = state.options.shutdown_grace;
    let (served_tx, served_rx) = tokio::sync::oneshot::channel::<()>();
    let signalled = async move {
        shutdown.await;
        engine.stop_accepting();
        let in_flight = engine.stats().queued + engine.stats().running;
        let _ = events_tx.send(ServerEvent::ShuttingDown { in_flight });
        // Past the grace period (or at a second signal) everything in flight is cancelled.
        let engine = engine.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = signal() => {}
                // Everything finished within the grace period.
                _ = served_rx => return,
            }
            let in_flight = engine.stats().queued + engine.stats().running;
            if in_flight > 0 {
                let _ = events_tx.send(ServerEvent::Cancelling { in_flight });
            }
            engine.cancel_all();
        });
    };
    let printer = tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            on_event(event);
        }
        on_event(ServerEvent::Stopped);
    });
    let served = axum::serve(listener, app).with_graceful_shutdown(signalled).await;
    state.engine.cancel_all();
    drop(state);
    // The grace task ends, and with it (holding the last sender) the printer.
    let _ = served_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    served.map_err(ServerError::Io)
}

/// Binds `options.host:options.port` and serves until SIGTERM or Ctrl-C, on a runtime of its own.
pub fn run(
    engine: Arc<Engine>,
    options: ServerOptions,
    on_event: impl FnMut(ServerEvent) + Send + 'static,
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = format!("{}:{}", options.host, options.port);
        let listener =
            tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, source })?;
        let state = AppState::new(engine, options);
        serve(listener, state, signal(), on_event).await
    })
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `Authorization: Bearer <key>` when the server has a key.
async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every answer by route and status.
async fn count_request(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map_or("other", |p| p.as_str()).to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let stats = state.engine.stats();
    let accepting = state.engine.is_accepting();
    let body = json!({
        "status": if accepting { "ok" } else { "shutting_down" },
        "model": state.options.model_id,
        "queued": stats.queued,
        "running": stats.running,
        "uptime_s": state.started.elapsed().as_secs(),
    });
    let status = if accepting { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(body)).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() - state.started.elapsed().as_secs());
    Json(json!({
        "object": "list",
        "data": [{ "id": state.options.model_id, "object": "model", "created": created, "owned_by": "dsocr" }],
    }))
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(&state.engine.stats());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no route {} {}", request.method(), request.uri().path()))
}

/// Seconds since the Unix epoch (the `created` field of answers).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
