//! Building and running the server: [`Application::build`] connects the store, binds the listener (port 0
//! picks a free port, which tests use) and exposes the bound address before serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{AppState, router};
use crate::store::Db;
use crate::webhook::client::WebhookClient;
use crate::webhook::retry::RetrySchedule;
use crate::webhook::ssrf::{AllowList, Guard};
use crate::webhook::worker::{Worker, WorkerConfig};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    worker: Arc<Worker>,
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Application> {
        let db = Db::connect_with(&config.database_url, config.store_options()).await?;
        Self::build_with_db(config, db).await
    }

    pub async fn build_with_db(config: Config, db: Db) -> anyhow::Result<Application> {
        let listener = TcpListener::bind(config.bind).await.with_context(|| format!("binding {}", config.bind))?;
        let mut config = config;
        let configured_public_url = config.public_url.as_ref().map(|_| config.public_url());
        if config.public_url.is_none() {
            config.public_url = Some(format!("http://{}", listener.local_addr()?));
        }
        let allow = AllowList::parse(&config.allow_targets).context("allow_targets")?;
        let guard = Guard::new(allow).with_dns_server(config.dns_server);
        let client = WebhookClient::new(guard.clone(), Duration::from_secs(config.delivery_timeout_seconds))?;
        let retry = match &config.retry_schedule {
            Some(s) => RetrySchedule::parse(s).context("retry_schedule")?,
            None => RetrySchedule::default(),
        };
        let worker_config = WorkerConfig {
            public_url: config.public_url(),
            retry,
            disable_after_seconds: config.disable_after_seconds,
            // Long enough to cover one attempt (its timeout) and recording it, short enough that the work of
            // a crashed process is picked up soon.
            lease_seconds: config.delivery_timeout_seconds as i64 + 15,
            max_in_flight: config.max_in_flight,
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let worker = Worker::new(db.clone(), client.clone(), worker_config, metrics.clone());
        let shutdown = CancellationToken::new();
        let state = AppState {
            db,
            config: Arc::new(config),
            guard: Arc::new(guard),
            webhook_client: client,
            metrics,
            configured_public_url,
            shutdown: shutdown.clone(),
            following: crate::follow::Following::default(),
        };
        Ok(Application { listener, state, shutdown, worker })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| self.state.config.bind)
    }

    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    pub fn db(&self) -> &Db {
        &self.state.db
    }

    /// A token that stops the server gracefully when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled.
    pub async fn run(self) -> anyhow::Result<()> {
        let app = router(self.state.clone());
        let token = self.shutdown.clone();
        let worker = tokio::spawn(self.worker.clone().run(token.clone()));
        let config = &self.state.config;
        let followers = crate::follow::start(
            &self.state.db,
            &config.follow,
            config.follow_key.as_ref().map(crate::config::Secret::expose),
            &self.state.following,
            &token,
        )
        .context("starting to follow")?;
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
            .context("serving HTTP")?;
        let _ = worker.await;
        for follower in followers {
            let _ = follower.await;
        }
        self.state.db.close().await;
        Ok(())
    }
}
