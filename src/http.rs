//! The operator's HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process is alive) and
//! `/readyz` (caches synced, and leader or standby known).

use std::{net::SocketAddr, sync::Arc};

use axum::{Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get};
use tokio::{net::TcpListener, sync::watch};

use crate::{controller::Readiness, leader::LeaderState, metrics::Metrics};

#[derive(Clone)]
pub struct Endpoints {
    pub metrics: Arc<Metrics>,
    /// Whether the running controllers' caches have synced.
    pub readiness: Readiness,
    /// The leader-election state, when there is an election.
    pub leader: Option<watch::Receiver<LeaderState>>,
}

impl Endpoints {
    /// Ready: a leader (or a process without election) whose caches synced, or a standby that
    /// knows who leads.
    fn ready(&self) -> bool {
        let synced = self.readiness.is_synced();
        match &self.leader {
            None => synced,
            Some(state) => match &*state.borrow() {
                LeaderState::Leader => synced,
                LeaderState::Standby { .. } => true,
                LeaderState::Unknown => false,
            },
        }
    }
}

pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(endpoints)
}

async fn metrics(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], endpoints.metrics.encode())
}

async fn readyz(State(endpoints): State<Endpoints>) -> impl IntoResponse {
    if endpoints.ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: caches not synced or leadership unknown")
    }
}

/// Binds `address` and serves until `shutdown` resolves; returns the bound address at once.
pub async fn serve(
    address: SocketAddr,
    endpoints: Endpoints,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(endpoints)).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "the HTTP server stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::Stores;

    /// Waits until the tracking task has marked the (storeless) run ready.
    async fn until_synced(readiness: &Readiness) {
        while !readiness.is_synced() {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_leader_is_ready_only_while_its_run_has_synced() {
        let readiness = Readiness::default();
        let (state, receiver) = watch::channel(LeaderState::Unknown);
        let endpoints = Endpoints { metrics: Arc::new(Metrics::new()), readiness: readiness.clone(), leader: Some(receiver) };
        assert!(!endpoints.ready(), "leadership unknown");
        state.send_replace(LeaderState::Standby { holder: Some("other".into()) });
        assert!(endpoints.ready(), "a standby that knows the leader is ready");

        state.send_replace(LeaderState::Leader);
        assert!(!endpoints.ready(), "a new leader whose caches have not synced");
        let term = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.track(Stores::default()).await }
        });
        until_synced(&readiness).await;
        assert!(endpoints.ready());

        // Leadership lost: the term's run ends, and when this process leads again it must sync anew.
        state.send_replace(LeaderState::Standby { holder: None });
        term.abort();
        let _ = term.await;
        state.send_replace(LeaderState::Leader);
        assert!(!endpoints.ready(), "leading again on caches of the previous term");
    }

    #[tokio::test]
    async fn without_election_readiness_is_the_caches() {
        let readiness = Readiness::default();
        let endpoints = Endpoints { metrics: Arc::new(Metrics::new()), readiness: readiness.clone(), leader: None };
        assert!(!endpoints.ready());
        let run = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.track(Stores::default()).await }
        });
        until_synced(&readiness).await;
        assert!(endpoints.ready());
        run.abort();
    }
}
