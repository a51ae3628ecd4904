//! Runs one mgmtd instance: binds the gRPC port, serves both services, and drives the lease and
//! the failure detector from timers until shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use r3fs_kv::Kv;
use r3fs_rpc::admin::admin_server::AdminServer;
use r3fs_rpc::mgmtd::mgmtd_server::MgmtdServer;
use r3fs_types::NodeId;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::clock::Clock;
use crate::config::MgmtdConfig;
use crate::core::{Mgmtd, MgmtdOptions};
use crate::service::MgmtdService;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bind {address}: {source}")]
    Bind { address: String, source: std::io::Error },
    #[error("read TLS file {path}: {source}")]
    TlsFile { path: String, source: std::io::Error },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("the gRPC server task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running mgmtd instance.
#[derive(Debug)]
pub struct Server {
    mgmtd: Arc<Mgmtd>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    grpc: JoinHandle<Result<(), tonic::transport::Error>>,
    timers: Vec<JoinHandle<()>>,
    grace: Duration,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Server {
    /// Binds, starts serving and starts the lease and failure-detector timers. `config` must have
    /// passed [`MgmtdConfig::validate`].
    pub async fn start(
        config: &MgmtdConfig,
        kv: Arc<dyn Kv>,
        clock: Arc<dyn Clock>,
    ) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(&config.listen)
            .await
            .map_err(|source| ServeError::Bind { address: config.listen.clone(), source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { address: config.listen.clone(), source })?;
        let address = if config.advertise_address.is_empty() {
            local_addr.to_string()
        } else {
            config.advertise_address.clone()
        };
        let options = MgmtdOptions {
            node_id: NodeId(config.node_id),
            address,
            hostname: if config.hostname.is_empty() { hostname() } else { config.hostname.clone() },
            release_version: env!("CARGO_PKG_VERSION").to_string(),
            lease_timeout_ms: config.lease_timeout_ms,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            heartbeat_timeout_ms: config.heartbeat_timeout_ms,
            routing_wait_max_ms: config.routing_wait_max_ms,
            retry: config.kv.retry,
        };
        let mgmtd = Mgmtd::new(kv, clock, options);
        let (shutdown, shutdown_rx) = watch::channel(false);

        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)));
        if let Some(tls) = &config.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|source| ServeError::TlsFile {
                    path: path.display().to_string(),
                    source,
                })
            };
            let identity =
                tonic::transport::Identity::from_pem(read(&tls.cert_path)?, read(&tls.key_path)?);
            builder =
                builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))?;
        }
        let service = MgmtdService::new(mgmtd.clone(), shutdown_rx.clone());
        let mut signal = shutdown_rx.clone();
        let router = builder
            .add_service(MgmtdServer::new(service.clone()))
            .add_service(AdminServer::new(service));
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let grpc = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async move {
            crate::core::wait_until(&mut signal, |stop| *stop).await;
        }));

        let renew = Duration::from_millis(config.lease_renew_interval_ms);
        let check = Duration::from_millis(config.failure_check_interval_ms);
        let timers = vec![
            spawn_timer(renew, shutdown_rx.clone(), {
                let mgmtd = mgmtd.clone();
                move || {
                    let mgmtd = mgmtd.clone();
                    async move {
                        if let Err(error) = mgmtd.lease_tick().await {
                            tracing::warn!(%error, "lease round failed");
                        }
                    }
                }
            }),
            spawn_timer(check, shutdown_rx, {
                let mgmtd = mgmtd.clone();
                move || {
                    let mgmtd = mgmtd.clone();
                    async move {
                        if let Err(error) = mgmtd.failure_tick().await {
                            tracing::warn!(%error, "failure detection round failed");
                        }
                    }
                }
            }),
        ];
        tracing::info!(%local_addr, node = config.node_id, backend = mgmtd.kv().backend_name(), "mgmtd serving");
        Ok(Server {
            mgmtd,
            local_addr,
            shutdown,
            grpc,
            timers,
            grace: Duration::from_millis(config.shutdown_grace_ms),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn mgmtd(&self) -> &Arc<Mgmtd> {
        &self.mgmtd
    }

    /// Stops serving (in-flight requests get the configured grace), stops the timers and releases
    /// the lease so another instance can take over at once.
    pub async fn shutdown(self) -> Result<(), ServeError> {
        let mgmtd = self.mgmtd.clone();
        let served = self.stop().await;
        match mgmtd.release_lease().await {
            Ok(true) => tracing::info!("released the mgmtd lease"),
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "could not release the mgmtd lease"),
        }
        served
    }

    /// Stops serving and the timers but keeps the lease, as a crash would: another instance takes
    /// over only once the lease expires. For failover tests.
    pub async fn stop_without_release(self) -> Result<(), ServeError> {
        self.stop().await
    }

    async fn stop(self) -> Result<(), ServeError> {
        self.shutdown.send_replace(true);
        for timer in self.timers {
            let _ = timer.await;
        }
        let mut grpc = self.grpc;
        match tokio::time::timeout(self.grace, &mut grpc).await {
            Ok(result) => result?.map_err(ServeError::from),
            Err(_) => {
                tracing::warn!(grace = ?self.grace, "requests still running after the shutdown grace; aborting them");
                grpc.abort();
                Ok(())
            }
        }
    }
}

/// Runs `tick` every `period` (first at once) until shutdown; a slow tick delays the next one
/// rather than piling them up.
fn spawn_timer<F, Fut>(
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    tick: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow_and_update() {
                return;
            }
            tokio::select! {
                _ = interval.tick() => tick().await,
                changed = shutdown.changed() => if changed.is_err() { return },
            }
        }
    })
}
