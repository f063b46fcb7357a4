//! The local HTTP gateway: the seed's REST API (`/api/v1/consciousness/delegate`,
//! `status/{lct_id}`, `cancel/{task_id}`) on loopback, for the one platform whose config it
//! holds, so that SAGE (Python) delegates without Rust. It holds the platform's key and
//! signs; callers present the local token ([`auth`]) and never see a secret.
//!
//! - [`auth`]: the token file (0600, next to the config) and its check.
//! - [`api`]: request and response bodies, the JSON error shape.
//! - [`openapi`]: the OpenAPI document.
//! - `routes`: the handlers.

pub mod api;
pub mod auth;
pub mod openapi;
mod routes;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::delegation::client::FederationClient;
use crate::protocol::limits::ENVELOPE_BYTES_MAX;

/// Port `sagefed up` gives the first platform's gateway; the others get the next ones.
pub const GATEWAY_PORT_BASE_DEFAULT: u16 = 8780;

/// Largest request body: a task must fit in one signed envelope.
pub const REQUEST_BYTES_MAX: usize = ENVELOPE_BYTES_MAX;

/// File name suffix of the file that tells local clients where a config's gateway listens:
/// `configs/thor.toml` -> `configs/thor.gateway.json`.
pub const ADDRESS_FILE_SUFFIX: &str = "gateway.json";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("the gateway listens on loopback only (127.0.0.1 or ::1), not {0}: it can spend the platform's ATP")]
    NotLoopback(SocketAddr),
    #[error(transparent)]
    Token(#[from] auth::TokenError),
    #[error(
        "cannot listen on {addr} ({source}); is another gateway running there? pick another port (`sagefed up --gateway-port`, `sagefed gateway --listen`)"
    )]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    AddressFile { path: PathBuf, source: std::io::Error },
    #[error("cannot join the federation as {platform}: {source}")]
    Federation {
        platform: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// What `<config>.gateway.json` holds: where the gateway of that config listens and where
/// its token is. No secret: the token stays in its 0600 file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GatewayAddress {
    pub platform: String,
    pub url: String,
    pub token_file: PathBuf,
}

/// Where the address file of the gateway of `config_path` goes.
pub fn address_path(config_path: &Path) -> PathBuf {
    config_path.with_extension(ADDRESS_FILE_SUFFIX)
}

/// A running gateway.
pub struct Gateway {
    address: GatewayAddress,
    address_file: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Serves the platform of `config` (read from `config_path`, whose token file it uses or
    /// creates) on `listen`, which must be a loopback address (port 0 picks a free one).
    pub async fn start(
        config: Config,
        config_path: &Path,
        client: async_nats::Client,
        listen: SocketAddr,
    ) -> Result<Self, GatewayError> {
        if !listen.ip().is_loopback() {
            return Err(GatewayError::NotLoopback(listen));
        }
        // Absolute, so that a client reading the address file from anywhere finds the token.
        let token_file = auth::token_path(&std::path::absolute(config_path).unwrap_or_else(|_| config_path.to_owned()));
        let token = auth::read_or_create(&token_file)?;
        let platform = config.platform().to_owned();
        let federation_error = |source: Box<dyn std::error::Error + Send + Sync>| GatewayError::Federation {
            platform: platform.clone(),
            source,
        };
        let federation = FederationClient::new(config.clone(), client.clone())
            .await
            .map_err(|e| federation_error(e.into()))?;
        let registry = federation.registry().clone();
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| GatewayError::Bind { addr: listen, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| GatewayError::Bind { addr: listen, source })?;
        let shared: routes::AppState = Arc::new(routes::Shared {
            config,
            client,
            federation,
            registry,
            token,
            in_flight: Arc::new(tokio::sync::Semaphore::new(routes::DELEGATIONS_IN_FLIGHT_MAX)),
        });
        let app = router(shared);
        let address = GatewayAddress {
            platform,
            url: format!("http://{local}"),
            token_file,
        };
        let address_file = address_path(config_path);
        let text = serde_json::to_string_pretty(&address).map_err(|e| GatewayError::AddressFile {
            path: address_file.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&address_file, text + "\n").map_err(|source| GatewayError::AddressFile {
            path: address_file.clone(),
            source,
        })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "the gateway stopped serving");
            }
        });
        Ok(Self {
            address,
            address_file,
            stop,
            task,
        })
    }

    /// Where it listens and where its token is.
    pub fn address(&self) -> &GatewayAddress {
        &self.address
    }

    /// Stops serving (requests in flight finish) and removes the address file.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
        let _ = std::fs::remove_file(&self.address_file);
    }
}

fn router(shared: routes::AppState) -> Router {
    Router::new()
        .route(openapi::PATHS[0], post(routes::delegate))
        .route(openapi::PATHS[1], get(routes::status))
        .route(openapi::PATHS[2], post(routes::cancel))
        .route(openapi::PATHS[3], get(routes::whoami))
        .route(openapi::PATHS[4], get(routes::openapi))
        .fallback(routes::not_found)
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            routes::require_token,
        ))
        .layer(DefaultBodyLimit::max(REQUEST_BYTES_MAX))
        .with_state(shared)
}
