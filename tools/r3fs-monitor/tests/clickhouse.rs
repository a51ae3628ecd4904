//! The collector against a real ClickHouse (Debian's 18.16 server): tables are created, pushed
//! samples are inserted and read back by `stats::latest`, and an outage costs at most the
//! buffer's bound, counted.

#![allow(clippy::unwrap_used)]

mod support;

use r3fs_metrics::{Registry, Request};
use r3fs_monitor::stats::{StatsQuery, latest};
use r3fs_monitor::{Monitor, MonitorConfig, client};
use support::{ClickHouse, unavailable};

fn push(monitor: &Monitor, service: &str, instance: &str, body: &str) -> u16 {
    monitor
        .handle(Request {
            method: "POST".into(),
            path: "/push".into(),
            headers: vec![
                ("x-r3fs-service".into(), service.into()),
                ("x-r3fs-instance".into(), instance.into()),
            ],
            body: body.as_bytes().to_vec(),
            peer: "127.0.0.1:1".parse().unwrap(),
        })
        .status
}

fn config(url: &str) -> MonitorConfig {
    let mut config = MonitorConfig::default();
    config.clickhouse.url = url.to_string();
    config.clickhouse.database = "r3fs_test".into();
    config.clickhouse.timeout_ms = 5_000;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_samples_are_inserted_and_read_back() {
    if let Some(reason) = unavailable() {
        eprintln!("{reason}");
        return;
    }
    let clickhouse = tokio::task::spawn_blocking(ClickHouse::start).await.unwrap();
    let monitor = Monitor::new(config(&clickhouse.url), Registry::new());
    let body = "r3fs_storage_write_ops_total{outcome=\"ok\",target=\"101\"} 5\n\
                r3fs_storage_write_latency_us{quantile=\"0.99\",target=\"101\"} 1234\n\
                r3fs_storage_target_used_bytes{target=\"101\"} 1048576\n";
    assert_eq!(push(&monitor, "storage", "node-1", body), 204);
    let later = body.replace("} 5\n", "} 9\n");
    assert_eq!(push(&monitor, "storage", "node-1", &later), 204);

    let ch = client(&monitor.config.clickhouse);
    let mut schema_known = false;
    let inserted = monitor.flush_once(&ch, &mut schema_known).await.unwrap();
    assert_eq!(inserted, 6);
    assert!(monitor.buffer.is_empty());

    let count = clickhouse.query("SELECT count() FROM r3fs_test.samples");
    assert_eq!(count.trim(), "6");
    let labels = clickhouse.query(
        "SELECT labels FROM r3fs_test.samples WHERE name = 'r3fs_storage_write_latency_us' LIMIT 1",
    );
    assert_eq!(labels.trim(), r#"quantile="0.99",target="101""#);

    let query = StatsQuery {
        since_seconds: 3600,
        name_contains: "write_ops".into(),
        service: "storage".into(),
        limit: 100,
    };
    let rows = latest(&ch, &monitor.config.clickhouse, &query).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].name, "r3fs_storage_write_ops_total");
    assert_eq!(rows[0].instance, "node-1");
    // Both pushes may land in the same second: the larger value (the later counter) wins.
    assert_eq!(rows[0].value, 9.0);
    let none = StatsQuery { service: "meta".into(), ..query };
    assert!(latest(&ch, &monitor.config.clickhouse, &none).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_costs_at_most_the_buffer_bound() {
    if let Some(reason) = unavailable() {
        eprintln!("{reason}");
        return;
    }
    // ClickHouse is not running yet on this port.
    let port = r3fs_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut config = config(&url);
    config.batch_rows_max = 4;
    config.buffer_rows_max = 8;
    let monitor = Monitor::new(config, Registry::new());
    let ch = client(&monitor.config.clickhouse);

    let body: String =
        (0..6).map(|i| format!("r3fs_test_value_units{{i=\"{i}\"}} {i}\n")).collect();
    assert_eq!(push(&monitor, "test", "a", &body), 204);
    let mut schema_known = false;
    assert!(monitor.flush_once(&ch, &mut schema_known).await.is_err(), "no server yet");
    assert_eq!(monitor.buffer.len(), 6, "a failed flush keeps its rows");
    assert_eq!(monitor.buffer.dropped(), 0);

    // Six more: four over the bound; the four oldest go, and are counted.
    assert_eq!(push(&monitor, "test", "b", &body), 204);
    assert_eq!(monitor.buffer.len(), 8);
    assert_eq!(monitor.buffer.dropped(), 4);
    let dropped = monitor
        .registry
        .snapshot()
        .into_iter()
        .find(|s| s.name == "r3fs_monitor_rows_dropped_total")
        .unwrap();
    assert_eq!(dropped.value, 4.0);

    // ClickHouse comes up: everything still buffered is inserted, in batches of 4.
    let clickhouse = tokio::task::spawn_blocking(move || ClickHouse::start_on(port)).await.unwrap();
    let inserted = monitor.flush_once(&ch, &mut schema_known).await.unwrap();
    assert_eq!(inserted, 8);
    assert_eq!(clickhouse.query("SELECT count() FROM r3fs_test.samples").trim(), "8");
    // The four dropped were instance a's oldest samples.
    let a =
        clickhouse.query("SELECT groupArray(value) FROM r3fs_test.samples WHERE instance = 'a'");
    assert_eq!(a.trim(), "[4,5]");
}
