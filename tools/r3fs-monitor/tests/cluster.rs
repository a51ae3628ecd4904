//! The whole monitoring path with real processes: ClickHouse, r3fs-monitor, and a cluster of
//! the storage suite's shape (tests/common of r3fs-storage, on r3fs-testkit's harness) whose
//! mgmtd the monitor scrapes and whose two storage daemons push to it. After some writes and reads, the
//! expected metrics are on the daemons' Prometheus endpoints and in ClickHouse.

#![allow(clippy::unwrap_used)]

#[path = "../../../engine/r3fs-storage/tests/common/mod.rs"]
mod common;
mod support;

use common::*;
use r3fs_storage::client::DataClient;
use r3fs_testkit::cluster::{Role, eventually};
use r3fs_testkit::{Proc, binary, free_port};
use r3fs_types::{ChainId, ChunkId, InodeId, TargetId};
use r3fs_wire::Outcome;
use std::process::Command;
use std::time::Duration;
use support::{ClickHouse, unavailable};

const CHAIN: u32 = 1;
const WAIT: Duration = Duration::from_secs(60);

fn metrics_section(listen: &str, push_target: &str) -> String {
    format!(
        "\n[metrics]\nlisten = \"{listen}\"\npush_target = \"{push_target}\"\n\
         push_interval_ms = 200\ntimeout_ms = 200\n"
    )
}

/// The value of `name{labels}` (labels as rendered) in a Prometheus text body.
fn value_of(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = if labels.is_empty() { name.to_string() } else { format!("{name}{{{labels}}}") };
    text.lines().find_map(|line| line.strip_prefix(&key)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(address: &str) -> String {
    let (status, body) =
        r3fs_metrics::http_get(address, "/metrics", Duration::from_secs(5)).await.unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemons_metrics_reach_prometheus_endpoints_and_clickhouse() {
    if let Some(reason) = unavailable() {
        eprintln!("{reason}");
        return;
    }
    let clickhouse = tokio::task::spawn_blocking(ClickHouse::start).await.unwrap();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();

    // The monitor first: it receives the daemons' pushes, scrapes mgmtd (retrying until mgmtd
    // is up) and writes to ClickHouse.
    let mgmtd_metrics = format!("127.0.0.1:{}", free_port());
    let monitor_address = format!("127.0.0.1:{}", free_port());
    let monitor_config = format!(
        "listen = \"{monitor_address}\"\nscrape_interval_ms = 300\nflush_interval_ms = 200\n\
         [[scrape_targets]]\nservice = \"mgmtd\"\ninstance = \"mgmtd-1\"\naddress = \"{mgmtd_metrics}\"\n\
         [clickhouse]\nurl = \"{}\"\ndatabase = \"r3fs_cluster\"\nretry_backoff_max_ms = 1000\n",
        clickhouse.url
    );
    std::fs::write(dir.path().join("monitor.toml"), monitor_config).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_r3fs-monitor"));
    command.arg("--config").arg(dir.path().join("monitor.toml"));
    let mut monitor = Proc::spawn("r3fs-monitor", command);
    monitor.wait_for_line("listening on", WAIT);

    // mgmtd with a metrics endpoint the monitor scrapes; two storage daemons (nodes 2 and 3)
    // pushing to the monitor, each with its own Prometheus endpoint.
    let storage_metrics: Vec<String> =
        (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut cluster = storage_cluster(2)
        .config(Role::Mgmtd, &metrics_section(&mgmtd_metrics, ""))
        .storage_config(2, &metrics_section(&storage_metrics[0], &monitor_address))
        .storage_config(3, &metrics_section(&storage_metrics[1], &monitor_address))
        .start()
        .await;
    let routing = start_chain(&mut cluster, CHAIN, &[(101, 2), (201, 3)]).await;
    let version = routing.chains[&ChainId(CHAIN)].chain_version;
    let head = routing.address_of(TargetId(101)).unwrap();
    let tail = routing.address_of(TargetId(201)).unwrap();

    // I/O: writes through the head, reads from the tail.
    let mut head_client = DataClient::connect(head).await.unwrap();
    let mut tail_client = DataClient::connect(tail).await.unwrap();
    let writes = 5u64;
    for index in 0..writes {
        let chunk = ChunkId::new(InodeId(9), index);
        let data = pattern(index, 64 << 10);
        let request = write_request(CHAIN, version, chunk, 0, &data, 1, index + 1);
        let reply = write(&mut head_client, request, &data).await;
        assert_eq!(reply.outcome, Outcome::Ok, "{reply:?}");
        let (outcome, read) = read(&mut tail_client, CHAIN, chunk, 0, data.len() as u32).await;
        assert_eq!(outcome, Outcome::Ok);
        assert_eq!(read, data);
    }

    // Prometheus endpoints: the head counted the writes and their bytes, the tail the reads.
    let head_text = scrape(&storage_metrics[0]).await;
    let ok_writes =
        value_of(&head_text, "r3fs_storage_write_ops_total", r#"outcome="ok",target="101""#);
    assert_eq!(ok_writes, Some(writes as f64), "{head_text}");
    let written = value_of(&head_text, "r3fs_storage_write_bytes_total", r#"target="101""#);
    assert_eq!(written, Some((writes * (64 << 10)) as f64));
    let p99 =
        value_of(&head_text, "r3fs_storage_write_latency_us", r#"target="101",quantile="0.99""#)
            .or_else(|| {
                value_of(
                    &head_text,
                    "r3fs_storage_write_latency_us",
                    r#"quantile="0.99",target="101""#,
                )
            });
    assert!(p99.is_some_and(|us| us > 0.0), "write p99 missing: {head_text}");
    assert!(head_text.contains("r3fs_storage_forward_latency_us_count{peer="), "{head_text}");
    let tail_text = scrape(&storage_metrics[1]).await;
    let reads = value_of(&tail_text, "r3fs_storage_read_ops_total", r#"outcome="ok",target="201""#);
    assert!(reads.is_some_and(|n| n >= writes as f64), "{tail_text}");
    eventually("mgmtd gauges show two serving targets", async || {
        let text = scrape(&mgmtd_metrics).await;
        (value_of(&text, "r3fs_mgmtd_targets_public_count", r#"state="serving""#) == Some(2.0))
            .then_some(())
    })
    .await;

    // ClickHouse: pushed storage samples, scraped mgmtd samples, the monitor's own.
    let ch = &clickhouse;
    let count = |sql: &str| ch.query(sql).trim().parse::<u64>().unwrap_or(0);
    eventually("the head's write count in ClickHouse", async || {
        let n = count(&format!(
            "SELECT count() FROM r3fs_cluster.samples WHERE service = 'storage' \
             AND instance = 'node-2' AND name = 'r3fs_storage_write_ops_total' \
             AND labels = 'outcome=\"ok\",target=\"101\"' AND value = {writes}"
        ));
        (n > 0).then_some(())
    })
    .await;
    eventually("the tail's reads in ClickHouse", async || {
        let n = count(
            "SELECT count() FROM r3fs_cluster.samples WHERE instance = 'node-3' \
             AND name = 'r3fs_storage_read_ops_total' AND value > 0",
        );
        (n > 0).then_some(())
    })
    .await;
    eventually("scraped mgmtd gauges in ClickHouse", async || {
        let n = count(
            "SELECT count() FROM r3fs_cluster.samples WHERE service = 'mgmtd' \
             AND name = 'r3fs_mgmtd_targets_public_count' AND labels = 'state=\"serving\"' AND value = 2",
        );
        (n > 0).then_some(())
    })
    .await;
    eventually("the monitor's own rows", async || {
        let n = count(
            "SELECT count() FROM r3fs_cluster.samples WHERE service = 'monitor' \
             AND name = 'r3fs_monitor_pushes_received_total' AND value > 0",
        );
        (n > 0).then_some(())
    })
    .await;

    // `r3fs stats` reads the same figures back.
    let output = Command::new(binary("r3fs", "r3fs"))
        .args(["stats", "--clickhouse-url", &ch.url, "--database", "r3fs_cluster"])
        .args(["--name", "write_ops", "--service", "storage"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        text.lines().any(|l| l.contains("r3fs_storage_write_ops_total") && l.contains("node-2")),
        "{text}"
    );

    assert!(monitor.terminate(Duration::from_secs(20)), "the monitor stops cleanly");
    drop(cluster);
}
