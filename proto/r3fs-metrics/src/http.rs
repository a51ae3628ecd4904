//! A deliberately small HTTP/1.1 server and client: enough for `GET /metrics`, the monitor's
//! `POST /push`, and scraping. One request per connection (`Connection: close`), bounded heads
//! and bodies, every step under a timeout. Not a general web server: the endpoints are for
//! operators' scrapers and r3fs-monitor on a trusted network.

use crate::{MetricsConfig, Registry, render};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Longest request or response head accepted.
pub const HEAD_BYTES_MAX: usize = 16 << 10;
/// Longest request or response body accepted (a push of a large daemon's snapshot fits).
pub const BODY_BYTES_MAX: usize = 64 << 20;
/// Connections one endpoint serves at once; more wait in the listen backlog.
pub const CONNECTIONS_MAX: usize = 64;
/// How long a server waits for one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Header carrying the pushing daemon's service name.
pub const SERVICE_HEADER: &str = "x-r3fs-service";
/// Header carrying the pushing daemon's instance name.
pub const INSTANCE_HEADER: &str = "x-r3fs-instance";

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Lower-cased names.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A response to send.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into().into_bytes(),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Reads a head (up to the blank line) and a `Content-Length` body; `None` length reads to EOF.
async fn read_message(
    stream: &mut TcpStream,
    read_to_eof_without_length: bool,
) -> io::Result<(String, Vec<(String, String)>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > HEAD_BYTES_MAX {
            return Err(invalid("head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line.split_once(':').ok_or_else(|| invalid("header without ':'"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().map_err(|_| invalid("bad content-length")))
        .transpose()?;
    let mut body = buf[head_end + 4..].to_vec();
    match length {
        Some(length) => {
            if length > BODY_BYTES_MAX {
                return Err(invalid(format!("body of {length} bytes exceeds {BODY_BYTES_MAX}")));
            }
            if body.len() > length {
                body.truncate(length);
            }
            let already = body.len();
            body.resize(length, 0);
            stream.read_exact(&mut body[already..]).await?;
        }
        None if read_to_eof_without_length => {
            let mut limited =
                stream.take((BODY_BYTES_MAX + 1 - body.len().min(BODY_BYTES_MAX)) as u64);
            limited.read_to_end(&mut body).await?;
            if body.len() > BODY_BYTES_MAX {
                return Err(invalid("body too long"));
            }
        }
        None => body.clear(),
    }
    Ok((first, headers, body))
}

async fn handle_connection<F>(mut stream: TcpStream, peer: SocketAddr, handler: Arc<F>)
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    let response =
        match tokio::time::timeout(REQUEST_TIMEOUT, read_message(&mut stream, false)).await {
            Ok(Ok((first, headers, body))) => {
                let mut parts = first.split_ascii_whitespace();
                let method = parts.next().unwrap_or_default().to_string();
                let path = parts.next().unwrap_or_default().to_string();
                handler(Request { method, path, headers, body, peer })
            }
            Ok(Err(error)) if error.kind() == io::ErrorKind::InvalidData => {
                Response::text(400, format!("{error}\n"))
            }
            // The peer went away or was too slow: nobody to answer.
            Ok(Err(_)) | Err(_) => return,
        };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&response.body).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, write).await;
}

/// Serves `handler` on `listener` until the task is dropped, at most [`CONNECTIONS_MAX`]
/// connections at once.
pub async fn serve<F>(listener: TcpListener, handler: F)
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "metrics endpoint accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            handle_connection(stream, peer, handler).await;
            drop(permit);
        });
    }
}

async fn request(
    address: &str,
    head: String,
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
        let (first, _headers, body) = read_message(&mut stream, true).await?;
        let status = first
            .split_ascii_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {first:?}")))?;
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("{address}: timed out")))?
}

/// `GET http://address/path`: status and body.
pub async fn http_get(address: &str, path: &str, timeout: Duration) -> io::Result<(u16, Vec<u8>)> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    request(address, head, &[], timeout).await
}

/// `POST http://address/path` with extra headers: status and body.
pub async fn http_post(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> io::Result<(u16, Vec<u8>)> {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    request(address, head, body, timeout).await
}

/// Why the exporter did not start.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    #[error("invalid [metrics] config: {0}")]
    Config(String),
    #[error("bind metrics endpoint {address}: {source}")]
    Bind { address: String, source: io::Error },
    #[error("start metrics thread: {0}")]
    Thread(io::Error),
}

/// The running `/metrics` endpoint and push loop of one daemon, on a thread of their own with a
/// current-thread tokio runtime. Dropping it stops both.
#[derive(Debug)]
pub struct Exporter {
    /// The bound endpoint address, if `listen` was set.
    pub local_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Exporter {
    /// Starts serving `registry` as `config` says. `service` is `storage`, `mgmtd`, `meta`,
    /// `fuse`, ...; `default_instance` names this process when `config.instance` is empty.
    pub fn start(
        config: &MetricsConfig,
        registry: &Registry,
        service: &str,
        default_instance: &str,
    ) -> Result<Exporter, ExporterError> {
        let errors = config.validate();
        if !errors.is_empty() {
            return Err(ExporterError::Config(errors.join("; ")));
        }
        let listener = if config.listen.is_empty() {
            None
        } else {
            let listener = std::net::TcpListener::bind(&config.listen)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| ExporterError::Bind { address: config.listen.clone(), source })?;
            Some(listener)
        };
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let instance = if config.instance.is_empty() {
            default_instance.to_string()
        } else {
            config.instance.clone()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let registry = registry.clone();
        let config = config.clone();
        let service = service.to_string();
        let thread = std::thread::Builder::new()
            .name("r3fs-metrics".to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::error!(%error, "metrics runtime did not start; no metrics served");
                        return;
                    }
                };
                runtime.block_on(run(listener, registry, config, service, instance, stopped));
            })
            .map_err(ExporterError::Thread)?;
        if let Some(address) = local_addr {
            tracing::info!(%address, "serving metrics");
        }
        Ok(Exporter { local_addr, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn run(
    listener: Option<std::net::TcpListener>,
    registry: Registry,
    config: MetricsConfig,
    service: String,
    instance: String,
    stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let serving = {
        let registry = registry.clone();
        async move {
            let Some(listener) = listener else { return std::future::pending().await };
            let listener = match TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::error!(%error, "metrics endpoint did not start");
                    return std::future::pending().await;
                }
            };
            serve(listener, move |request| match (request.method.as_str(), request.path.as_str()) {
                ("GET", "/metrics") => Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: render(&registry).into_bytes(),
                },
                (_, "/metrics") => Response::text(405, "only GET\n"),
                _ => Response::text(404, "try /metrics\n"),
            })
            .await
        }
    };
    let pushing = async {
        if config.push_target.is_empty() {
            return std::future::pending().await;
        }
        let failures = registry.counter(
            "r3fs_metrics_push_failures_total",
            "Pushes to r3fs-monitor that failed (the next push carries the same totals)",
            &[],
        );
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut interval = tokio::time::interval(Duration::from_millis(config.push_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            interval.tick().await;
            let body = render(&registry);
            let headers =
                [(SERVICE_HEADER, service.as_str()), (INSTANCE_HEADER, instance.as_str())];
            let result =
                http_post(&config.push_target, "/push", &headers, body.as_bytes(), timeout).await;
            match result {
                Ok((status, _)) if (200..300).contains(&status) => {
                    if failing {
                        tracing::info!(target = %config.push_target, "metrics push recovered");
                    }
                    failing = false;
                }
                other => {
                    failures.inc();
                    // Log the first failure of a run, not every interval.
                    if !failing {
                        let detail = match other {
                            Ok((status, body)) => {
                                format!("status {status}: {}", String::from_utf8_lossy(&body))
                            }
                            Err(error) => error.to_string(),
                        };
                        tracing::warn!(target = %config.push_target, %detail, "metrics push failed");
                    }
                    failing = true;
                }
            }
        }
    };
    tokio::select! {
        _ = stopped => {}
        () = serving => {}
        () = pushing => {}
    }
}
