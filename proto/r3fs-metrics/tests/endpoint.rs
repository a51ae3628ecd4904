//! The exporter over real loopback sockets: `GET /metrics` serves what was recorded, other
//! paths and methods are refused, and the push loop delivers snapshots with the service and
//! instance headers to a listener.

#![allow(clippy::unwrap_used)]

use r3fs_metrics::{
    Exporter, INSTANCE_HEADER, MetricsConfig, Registry, Response, SERVICE_HEADER, http_get,
    http_post, parse, serve,
};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn endpoint_serves_recorded_metrics() {
    let registry = Registry::new();
    registry.counter("r3fs_test_reads_total", "reads", &[("target", "1")]).add(41);
    let config = MetricsConfig { listen: "127.0.0.1:0".to_string(), ..MetricsConfig::default() };
    let exporter = Exporter::start(&config, &registry, "test", "test-1").unwrap();
    let address = exporter.local_addr.unwrap().to_string();

    let (status, body) = http_get(&address, "/metrics", TIMEOUT).await.unwrap();
    assert_eq!(status, 200);
    let samples = parse(std::str::from_utf8(&body).unwrap()).unwrap();
    let reads = samples.iter().find(|s| s.name == "r3fs_test_reads_total").unwrap();
    assert_eq!(reads.value, 41.0);

    // Recorded after the first scrape: the next scrape sees it.
    registry.counter("r3fs_test_reads_total", "reads", &[("target", "1")]).inc();
    let (_, body) = http_get(&address, "/metrics", TIMEOUT).await.unwrap();
    assert!(String::from_utf8(body).unwrap().contains("r3fs_test_reads_total{target=\"1\"} 42"));

    assert_eq!(http_get(&address, "/other", TIMEOUT).await.unwrap().0, 404);
    assert_eq!(http_post(&address, "/metrics", &[], b"x", TIMEOUT).await.unwrap().0, 405);
    drop(exporter);
    assert!(http_get(&address, "/metrics", TIMEOUT).await.is_err(), "stopped on drop");
}

#[tokio::test]
async fn push_loop_delivers_snapshots_with_headers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(serve(listener, move |request| {
        let _ = sender.send(request);
        Response::text(204, "")
    }));

    let registry = Registry::new();
    registry.gauge("r3fs_test_queue_length", "queue", &[]).set(7);
    let config = MetricsConfig {
        push_target: target,
        push_interval_ms: 100,
        timeout_ms: 100,
        ..MetricsConfig::default()
    };
    let _exporter = Exporter::start(&config, &registry, "test", "node-9").unwrap();
    let request = tokio::time::timeout(TIMEOUT, received.recv()).await.unwrap().unwrap();
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/push");
    assert_eq!(request.header(SERVICE_HEADER), Some("test"));
    assert_eq!(request.header(INSTANCE_HEADER), Some("node-9"));
    let samples = parse(std::str::from_utf8(&request.body).unwrap()).unwrap();
    assert!(samples.iter().any(|s| s.name == "r3fs_test_queue_length" && s.value == 7.0));
}

#[tokio::test]
async fn push_failures_are_counted() {
    // A port nothing listens on: bind, note it, close.
    let target = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let registry = Registry::new();
    let config = MetricsConfig {
        push_target: target,
        push_interval_ms: 100,
        timeout_ms: 100,
        ..MetricsConfig::default()
    };
    let _exporter = Exporter::start(&config, &registry, "test", "node-9").unwrap();
    let failures = registry.counter("r3fs_metrics_push_failures_total", "", &[]);
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while failures.get() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no failed push counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_config_is_refused_at_start() {
    let config = MetricsConfig { listen: "nonsense".to_string(), ..MetricsConfig::default() };
    let error = Exporter::start(&config, &Registry::new(), "test", "x").unwrap_err();
    assert!(error.to_string().contains("metrics.listen"), "{error}");
}
