//! Serving the API over TCP with limits no client can exceed, so API clients can never take
//! the file descriptors, threads or time ingestion needs.
//!
//! - **Connections**: at most `api.max-connections` open at once; a connection beyond it is
//!   closed as soon as it is accepted (counted in `kmflow_http_connections_refused_total`).
//!   At start the soft `RLIMIT_NOFILE` is raised to the hard limit, and the connection limit is
//!   lowered if needed so that [`FD_RESERVE`] descriptors stay for RocksDB and Kafka.
//! - **Timeouts**: a request's headers must arrive within `api.header-timeout-ms` (slowloris);
//!   a connection with no traffic for `api.idle-timeout-ms` is closed (idle keep-alive, and
//!   clients that stop reading their answer); a request is answered within
//!   `api.request-timeout-ms` or gets a 503 (see `api::limits`).
//! - **Shutdown**: on stop, every connection finishes its request in flight and closes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tower::ServiceExt;

use crate::config::ApiConfig;
use crate::metrics::Metrics;

/// File descriptors kept for RocksDB (SST files, WAL), Kafka (broker sockets) and the rest of
/// the process, whatever the API's connection limit.
pub const FD_RESERVE: u64 = 1024;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// The connection limit in force: the configured one, lowered so [`FD_RESERVE`] descriptors
/// stay free under the process's `nofile` limit.
pub fn effective_max_connections(configured: usize, nofile: u64) -> usize {
    let room = nofile.saturating_sub(FD_RESERVE).max(16) as usize;
    configured.min(room)
}

/// Connections the kernel queues for the API before it accepts them (capped by
/// `net.core.somaxconn`). The accept loop yields to the connections it started every so often
/// (tokio's cooperative budget), so a burst of connects outruns it for a moment: with the
/// default backlog of 128, a burst overflowed the queue and the connect dropped waited for
/// TCP's retransmission, 1 s.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` with a backlog of [`LISTEN_BACKLOG`]. Call within a tokio runtime.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As std's and tokio's own bind: a restarted kmflow can bind while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `router` on `listener` until `stop` is notified, within `cfg`'s limits.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    cfg: ApiConfig,
    max_connections: usize,
    metrics: Metrics,
    stop: Arc<Notify>,
) {
    let slots = Arc::new(Semaphore::new(max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.header_timeout_ms))
        .max_buf_size(64 * 1024);
    let idle = Duration::from_millis(cfg.idle_timeout_ms);
    let stopped = Arc::new(Notify::new());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a reset before accept: back off, keep serving.
                    tracing::warn!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.notified() => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics.http.connections_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        metrics.http.connections.inc();
        // Registered before the task runs, so a stop right after accept still reaches it.
        let stop = stopped.clone().notified_owned();
        let (builder, router, metrics) = (builder.clone(), router.clone(), metrics.clone());
        tokio::spawn(async move {
            serve_connection(stream, builder, router, idle, stop).await;
            metrics.http.connections.dec();
            drop(slot);
        });
    }
    stopped.notify_waiters();
    // Connections finish their request in flight (each is bounded by the request timeout);
    // wait for them, but never longer than DRAIN.
    let _ = tokio::time::timeout(DRAIN, slots.acquire_many(max_connections as u32)).await;
}

/// The longest a stop waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// How long a connection idle for `api.idle-timeout-ms` with an answer still in flight (its
/// client stopped reading) is given to finish before it is dropped.
const STALLED_GRACE: Duration = Duration::from_secs(1);

async fn serve_connection(
    stream: TcpStream,
    builder: hyper::server::conn::http1::Builder,
    router: Router,
    idle: Duration,
    stop: tokio::sync::futures::OwnedNotified,
) {
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = TokioIo::new(Tracked {
        inner: stream,
        epoch,
        last: last.clone(),
    });
    let service = TowerToHyperService::new(
        router
            .into_service::<Body>()
            .map_request(|req: Request<Incoming>| req.map(Body::new)),
    );
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut closing = false;
    tokio::pin!(stop);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = tokio::time::Instant::from_std(epoch + since + idle);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = tokio::time::sleep_until(deadline) => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if quiet < idle {
                    continue;
                }
                if closing {
                    return; // a client that stopped reading its answer: drop it
                }
                // An idle keep-alive connection closes at once. One with an answer in flight
                // that nothing was written to for `idle` (a client that stopped reading, such
                // as a stalled live-feed subscriber) gets a short grace, then is dropped.
                closing = true;
                conn.as_mut().graceful_shutdown();
                let grace = STALLED_GRACE.min(idle);
                let since = (epoch.elapsed() + grace).saturating_sub(idle);
                last.store(since.as_millis() as u64, Ordering::Relaxed);
            }
            _ = &mut stop, if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A socket that records when it last moved a byte, for the idle timeout.
struct Tracked {
    inner: TcpStream,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
