//! Starting and stopping the read API on its own tokio runtime.

use std::sync::Arc;

use anyhow::Context as _;

use crate::api::{app, AppState};
use crate::config::Config;
use crate::serve;

/// The running API: its runtime, address and the handle that stops it.
pub struct ApiServer {
    pub rt: tokio::runtime::Runtime,
    pub addr: std::net::SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    server: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds `api.listen` and serves `state` within the configured limits (see `serve`).
    /// RocksDB reads run on a blocking pool of `api.read-threads` threads.
    pub fn start(config: &Config, state: AppState) -> anyhow::Result<ApiServer> {
        let nofile = serve::raise_nofile_limit();
        let max_connections = serve::effective_max_connections(config.api.max_connections, nofile);
        if max_connections < config.api.max_connections {
            tracing::warn!(
                configured = config.api.max_connections,
                nofile,
                max_connections,
                "api.max-connections lowered to keep file descriptors for RocksDB and Kafka"
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(config.api.read_threads())
            .thread_name("kmflow-api")
            .enable_all()
            .build()?;
        let listener = rt
            .block_on(async { serve::bind(config.api.listen) })
            .with_context(|| format!("binding the API to {}", config.api.listen))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let server = rt.spawn(serve::serve(
            listener,
            app(state.clone()),
            config.api.clone(),
            max_connections,
            state.metrics.clone(),
            stop.clone(),
        ));
        Ok(ApiServer {
            rt,
            addr,
            stop,
            server,
        })
    }

    /// Stops accepting, lets requests in flight finish, and waits for the server.
    pub fn stop(self) {
        self.stop.notify_one();
        let _ = self.rt.block_on(self.server);
    }
}
