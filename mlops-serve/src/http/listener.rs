//! [`serve`]: the accept loop and connection handling, with the deadlines and
//! caps of [`HttpConfig`] that a router alone cannot give.
//!
//! axum's own `serve` keeps a connection that sent part of its headers open
//! forever and has no connection cap or shutdown deadline, so the loop is written
//! here on hyper's HTTP/1 connection, which has a header-read timer:
//!
//! - headers: `header_read_timeout`, counted from when a connection is ready for
//!   a request, so it also closes idle keep-alive connections;
//! - bodies: `body_timeout`, in the handlers that read them (408);
//! - answers: a write that makes no progress for `write_timeout` closes the
//!   connection ([`WriteDeadline`]);
//! - connections: at most `max_connections`; beyond them `probe_connections`
//!   more serve health probes only (one request each), so a pod whose slots are
//!   all held still answers its liveness probe; the next ones get a 503 and are
//!   closed at once;
//! - shutdown: no new connections, idle ones closed, requests in flight get
//!   `shutdown_grace` to finish, then every connection is dropped.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::config::HttpConfig;

/// What a connection beyond the cap is told before it is closed.
const OVER_CAPACITY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\n\
content-type: application/json\r\ncontent-length: 58\r\nconnection: close\r\n\r\n\
{\"error\":\"unavailable: too many connections; retry later\"}";

/// The limits one connection needs.
#[derive(Debug, Clone, Copy)]
struct ConnectionLimits {
    header_read_timeout: Duration,
    write_timeout: Duration,
    max_header_bytes: usize,
}

/// Serves `router` on `listener` with the connection limits of `config` until
/// `shutdown` completes; then stops accepting, lets requests in flight finish
/// for up to `config.shutdown_grace`, and closes every connection left. Returns
/// when all connections are closed.
///
/// ```no_run
/// # async fn demo(server: mlops_serve::ModelServer) -> mlops_core::Result<()> {
/// use mlops_serve::http::{router, serve};
/// use mlops_serve::{ApiKeys, HttpConfig, Scope};
///
/// let config = HttpConfig::default()
///     .with_keys(ApiKeys::new().with_key("app", "s3cret", &[Scope::Infer]));
/// let app = router(server, config.clone())?;
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8000").await
///     .map_err(|e| mlops_core::Error::backend("listener", e))?;
/// serve(listener, app, &config, std::future::pending())
///     .await
///     .map_err(|e| mlops_core::Error::backend("HTTP server", e))?;
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        write_timeout: config.write_timeout,
        // hyper panics below its minimum; `HttpConfig::validate` names the
        // mistake, this only keeps a config that skipped it from panicking.
        max_header_bytes: config.max_header_bytes.max(crate::config::MIN_HEADER_BYTES),
    };
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let probe_slots = Arc::new(Semaphore::new(config.probe_connections));
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: the listener itself
                    // is fine, so wait a little rather than spin or give up.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (slot, probes_only) = match slots.clone().try_acquire_owned() {
            Ok(slot) => (slot, false),
            Err(_) => match probe_slots.clone().try_acquire_owned() {
                Ok(slot) => (slot, true),
                Err(_) => {
                    // One non-blocking write: a client that does not read
                    // cannot hold anything here.
                    let _ = stream.try_write(OVER_CAPACITY);
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = config.tls.clone() {
            let (router, stopping) = (router.clone(), stopping.clone());
            connections.spawn(async move {
                // The handshake has the header deadline: a client that opens
                // a connection and says nothing cannot hold its slot.
                let handshake =
                    tokio::time::timeout(limits.header_read_timeout, tls.0.accept(stream)).await;
                match handshake {
                    Ok(Ok(stream)) => {
                        connection(stream, router, limits, stopping, slot, probes_only).await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            });
            continue;
        }
        connections.spawn(connection(
            stream,
            router.clone(),
            limits,
            stopping.clone(),
            slot,
            probes_only,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            "{} connections still open {:?} after shutdown began: closing them",
            connections.len(),
            config.shutdown_grace
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    router: Router,
    limits: ConnectionLimits,
    mut stopping: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
    probes_only: bool,
) {
    let io = TokioIo::new(WriteDeadline::new(stream, limits.write_timeout));
    let service = TowerToHyperService::new(router);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // Headers beyond this are answered 431 before any key is checked.
        .max_buf_size(limits.max_header_bytes);
    if probes_only {
        // A reserve slot serves one probe and closes: it cannot be held.
        builder.keep_alive(false);
        let probes = service_fn(move |request: Request<Incoming>| {
            let answer = is_probe(&request).then(|| service.call(request));
            async move {
                match answer {
                    Some(answer) => answer.await,
                    None => Ok(over_capacity()),
                }
            }
        });
        let mut conn = pin!(builder.serve_connection(io, probes));
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stopping.wait_for(|stop| *stop) => {}
        }
        conn.as_mut().graceful_shutdown();
        let _ = conn.await;
        return;
    }
    let mut conn = pin!(builder.serve_connection(io, service));
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stopping.wait_for(|stop| *stop) => {}
    }
    // Idle connections close now; one with a request in flight closes after it
    // (or when `serve` drops it at the end of the grace period).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// Whether `request` is a health probe (`GET /v2/health/live` or `/ready`),
/// the only requests a reserve slot serves.
fn is_probe<B>(request: &Request<B>) -> bool {
    request.method() == Method::GET
        && matches!(request.uri().path(), "/v2/health/live" | "/v2/health/ready")
}

/// The over-capacity 503 as a response, for requests on a reserve slot that
/// are not probes.
fn over_capacity() -> Response<Body> {
    let mut response = Response::new(Body::from(
        r#"{"error":"unavailable: too many connections; retry later"}"#,
    ));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// A stream whose writes fail with [`io::ErrorKind::TimedOut`] once one has made
/// no progress for the deadline: a client that stops reading its answer cannot
/// hold a connection (and its task and buffers) forever.
struct WriteDeadline<S> {
    stream: S,
    deadline: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteDeadline<S> {
    fn new(stream: S, deadline: Duration) -> Self {
        Self {
            stream,
            deadline,
            stalled: None,
        }
    }

    /// Turns a pending write into a timeout once it has been pending too long.
    fn watch<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let deadline = self.deadline;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
        ready!(sleep.as_mut().poll(cx));
        self.stalled = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client read nothing for {deadline:?}"),
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}
