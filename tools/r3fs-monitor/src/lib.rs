//! r3fs-monitor: the collector that stores every daemon's metric samples in ClickHouse.
//!
//! Daemons push their Prometheus text to `POST /push` (headers name the service and instance),
//! or the monitor scrapes their `/metrics` endpoints ([`ScrapeTarget`]). Samples become
//! [`SampleRow`]s in a bounded in-memory [`Buffer`]; a flusher batch-inserts them into
//! ClickHouse with the `clickhouse` crate, creating the database and table if missing.
//!
//! Invariants:
//! - The buffer never holds more than `buffer_rows_max` rows. While ClickHouse is down it fills;
//!   beyond the bound the oldest rows are dropped and `r3fs_monitor_rows_dropped_total` counts
//!   them. Nothing else is lost: a failed batch goes back to the front of the buffer.
//! - Delivery is at least once: a batch whose insert succeeded on the server but whose answer
//!   was lost is sent again. Readers use `argMax`/`max` per series, which duplicates do not change.
//! - Rows are written with validation off (ClickHouse 18.16 lacks what the crate's schema check
//!   needs), so [`SampleRow`]'s field order and types are exactly [`create_table_sql`]'s columns.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod config;
pub mod stats;

pub use config::{ClickHouseConfig, MonitorConfig, ScrapeTarget};

use r3fs_metrics::{Registry, Request, Response, Sample};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One sample as stored: columns `time DateTime, service String, instance String, name String,
/// labels String, value Float64`, in this order.
#[derive(Clone, Debug, PartialEq, clickhouse::Row, Serialize, Deserialize)]
pub struct SampleRow {
    /// Seconds since the Unix epoch (ClickHouse `DateTime`).
    pub time: u32,
    pub service: String,
    pub instance: String,
    pub name: String,
    /// Prometheus label text without braces: `op="read",target="101"`.
    pub labels: String,
    pub value: f64,
}

/// Seconds since the epoch, saturating (DateTime is 32-bit).
pub fn now_seconds() -> u32 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// Longest service or instance name accepted from a push; longer pushes are refused.
pub const NAME_BYTES_MAX: usize = 128;

/// Rows of one sample set.
pub fn rows(time: u32, service: &str, instance: &str, samples: Vec<Sample>) -> Vec<SampleRow> {
    samples
        .into_iter()
        .map(|sample| SampleRow {
            time,
            service: service.to_string(),
            instance: instance.to_string(),
            labels: sample.labels_text(),
            name: sample.name,
            value: sample.value,
        })
        .collect()
}

/// The bounded queue between receivers and the flusher.
#[derive(Debug)]
pub struct Buffer {
    rows: Mutex<VecDeque<SampleRow>>,
    rows_max: usize,
    dropped: r3fs_metrics::Counter,
    buffered: r3fs_metrics::Gauge,
}

impl Buffer {
    pub fn new(rows_max: usize, registry: &Registry) -> Buffer {
        Buffer {
            rows: Mutex::new(VecDeque::new()),
            rows_max,
            dropped: registry.counter(
                "r3fs_monitor_rows_dropped_total",
                "Sample rows dropped because the buffer was full (ClickHouse down or slow)",
                &[],
            ),
            buffered: registry.gauge(
                "r3fs_monitor_buffer_rows",
                "Sample rows waiting to be inserted into ClickHouse",
                &[],
            ),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<SampleRow>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn trim(&self, rows: &mut VecDeque<SampleRow>) {
        let excess = rows.len().saturating_sub(self.rows_max);
        if excess > 0 {
            rows.drain(..excess);
            self.dropped.add(excess as u64);
        }
        self.buffered.set(rows.len() as i64);
    }

    /// Appends new rows, dropping the oldest beyond the bound.
    pub fn push(&self, new_rows: Vec<SampleRow>) {
        let mut rows = self.lock();
        rows.extend(new_rows);
        self.trim(&mut rows);
    }

    /// Takes up to `count` of the oldest rows.
    pub fn take(&self, count: usize) -> Vec<SampleRow> {
        let mut rows = self.lock();
        let count = count.min(rows.len());
        let batch = rows.drain(..count).collect();
        self.buffered.set(rows.len() as i64);
        batch
    }

    /// Puts a batch that failed back in front, in order; if the buffer filled meanwhile, the
    /// oldest rows (those of the batch first) are dropped.
    pub fn put_back(&self, batch: Vec<SampleRow>) {
        let mut rows = self.lock();
        for row in batch.into_iter().rev() {
            rows.push_front(row);
        }
        self.trim(&mut rows);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

/// `CREATE DATABASE` for the configured database.
pub fn create_database_sql(config: &ClickHouseConfig) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {}", config.database)
}

/// The samples table. MergeTree partitioned by day so retention is `ALTER TABLE .. DROP
/// PARTITION` (18.16 has no TTL); ordered for "one metric of one instance over time".
pub fn create_table_sql(config: &ClickHouseConfig) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (time DateTime, service String, instance String, \
         name String, labels String, value Float64) ENGINE = MergeTree() \
         PARTITION BY toYYYYMMDD(time) ORDER BY (name, service, instance, labels, time)",
        config.database, config.table
    )
}

/// A ClickHouse client for `config` (validation off: see the crate docs).
pub fn client(config: &ClickHouseConfig) -> clickhouse::Client {
    let mut client = clickhouse::Client::default().with_url(&config.url).with_validation(false);
    if !config.user.is_empty() {
        client = client.with_user(&config.user);
    }
    if !config.password.is_empty() {
        client = client.with_password(&config.password);
    }
    client
}

/// Creates the database and the table if missing.
pub async fn ensure_schema(
    client: &clickhouse::Client,
    config: &ClickHouseConfig,
) -> anyhow::Result<()> {
    use anyhow::Context;
    client.query(&create_database_sql(config)).execute().await.context("create database")?;
    client.query(&create_table_sql(config)).execute().await.context("create table")?;
    Ok(())
}

/// Inserts one batch in one INSERT.
pub async fn insert(
    client: &clickhouse::Client,
    config: &ClickHouseConfig,
    batch: &[SampleRow],
) -> anyhow::Result<()> {
    use anyhow::Context;
    // The crate quotes the table name as one identifier, so the database travels separately.
    let client = client.clone().with_database(&config.database);
    let mut insert = client.insert::<SampleRow>(&config.table).await.context("start insert")?;
    for row in batch {
        insert.write(row).await.context("write row")?;
    }
    insert.end().await.context("finish insert")?;
    Ok(())
}

/// The collector's moving parts, shared by the push handler, the scrapers and the flusher.
#[derive(Debug)]
pub struct Monitor {
    pub config: MonitorConfig,
    pub registry: Registry,
    pub buffer: Buffer,
    pushes: r3fs_metrics::Counter,
    push_refusals: r3fs_metrics::Counter,
}

impl Monitor {
    pub fn new(config: MonitorConfig, registry: Registry) -> Arc<Monitor> {
        let buffer = Buffer::new(config.buffer_rows_max, &registry);
        let pushes = registry.counter(
            "r3fs_monitor_pushes_received_total",
            "Sample pushes accepted from daemons",
            &[],
        );
        let push_refusals = registry.counter(
            "r3fs_monitor_pushes_refused_total",
            "Pushes refused (bad path, headers or text)",
            &[],
        );
        Arc::new(Monitor { config, registry, buffer, pushes, push_refusals })
    }

    /// The `POST /push` handler (plus the monitor's own `GET /metrics`).
    pub fn handle(&self, request: Request) -> Response {
        match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/push") => {}
            ("GET", "/metrics") => {
                return Response {
                    status: 200,
                    content_type: "text/plain; version=0.0.4; charset=utf-8",
                    body: r3fs_metrics::render(&self.registry).into_bytes(),
                };
            }
            _ => {
                self.push_refusals.inc();
                return Response::text(404, "POST /push or GET /metrics\n");
            }
        }
        let service = request.header(r3fs_metrics::SERVICE_HEADER).unwrap_or_default();
        let instance = request.header(r3fs_metrics::INSTANCE_HEADER).unwrap_or_default();
        let name_ok = |s: &str| !s.is_empty() && s.len() <= NAME_BYTES_MAX;
        if !name_ok(service) || !name_ok(instance) {
            self.push_refusals.inc();
            return Response::text(
                400,
                "x-r3fs-service and x-r3fs-instance headers are required\n",
            );
        }
        let samples = match std::str::from_utf8(&request.body)
            .map_err(|e| e.to_string())
            .and_then(|text| r3fs_metrics::parse(text).map_err(|e| e.to_string()))
        {
            Ok(samples) => samples,
            Err(error) => {
                self.push_refusals.inc();
                return Response::text(400, format!("{error}\n"));
            }
        };
        self.pushes.inc();
        self.buffer.push(rows(now_seconds(), service, instance, samples));
        Response::text(204, "")
    }

    /// Scrapes one target once into the buffer.
    pub async fn scrape(&self, target: &ScrapeTarget) -> anyhow::Result<usize> {
        let timeout = Duration::from_millis(self.config.clickhouse.timeout_ms);
        let (status, body) = r3fs_metrics::http_get(&target.address, "/metrics", timeout).await?;
        anyhow::ensure!(status == 200, "{} answered {status}", target.address);
        let samples = r3fs_metrics::parse(std::str::from_utf8(&body)?)?;
        let count = samples.len();
        self.buffer.push(rows(now_seconds(), &target.service, &target.instance, samples));
        Ok(count)
    }

    /// Records the monitor's own metrics as samples of service `monitor`.
    pub fn record_self(&self) {
        let instance =
            if self.config.instance.is_empty() { "monitor" } else { &self.config.instance };
        self.buffer.push(rows(now_seconds(), "monitor", instance, self.registry.snapshot()));
    }

    /// Runs scrapers and the flusher until `stop` resolves; then flushes what is buffered once
    /// more (bounded by the insert timeout).
    pub async fn run(self: Arc<Self>, stop: impl std::future::Future<Output = ()>) {
        let scrapers = {
            let monitor = self.clone();
            async move {
                let scrape_failures = monitor.registry.counter(
                    "r3fs_monitor_scrape_failures_total",
                    "Scrapes of a daemon's /metrics that failed",
                    &[],
                );
                let mut interval =
                    tokio::time::interval(Duration::from_millis(monitor.config.scrape_interval_ms));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    interval.tick().await;
                    for target in &monitor.config.scrape_targets {
                        if let Err(error) = monitor.scrape(target).await {
                            scrape_failures.inc();
                            tracing::debug!(address = %target.address, %error, "scrape failed");
                        }
                    }
                    monitor.record_self();
                }
            }
        };
        let flusher = self.clone().flush_loop();
        tokio::select! {
            () = stop => {}
            () = scrapers => {}
            () = flusher => {}
        }
        let client = client(&self.config.clickhouse);
        let timeout = Duration::from_millis(self.config.clickhouse.timeout_ms);
        let _ = tokio::time::timeout(timeout, self.flush_once(&client, &mut true)).await;
    }

    /// Inserts batches until the buffer is empty or an insert fails. `schema_known` is cleared
    /// on failure so the next attempt re-creates the table (the server may have lost it).
    pub async fn flush_once(
        &self,
        client: &clickhouse::Client,
        schema_known: &mut bool,
    ) -> anyhow::Result<usize> {
        let config = &self.config.clickhouse;
        let mut inserted = 0;
        loop {
            if self.buffer.is_empty() {
                return Ok(inserted);
            }
            if !*schema_known {
                ensure_schema(client, config).await?;
                *schema_known = true;
            }
            let batch = self.buffer.take(self.config.batch_rows_max);
            let timeout = Duration::from_millis(config.timeout_ms);
            let result = match tokio::time::timeout(timeout, insert(client, config, &batch)).await {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!("insert timed out after {timeout:?}")),
            };
            if let Err(error) = result {
                self.buffer.put_back(batch);
                *schema_known = false;
                return Err(error);
            }
            inserted += batch.len();
            self.registry
                .counter(
                    "r3fs_monitor_rows_inserted_total",
                    "Sample rows inserted into ClickHouse",
                    &[],
                )
                .add(batch.len() as u64);
        }
    }

    async fn flush_loop(self: Arc<Self>) {
        let client = client(&self.config.clickhouse);
        let failures = self.registry.counter(
            "r3fs_monitor_insert_failures_total",
            "Batch inserts into ClickHouse that failed (the rows stay buffered)",
            &[],
        );
        let interval = Duration::from_millis(self.config.flush_interval_ms);
        let backoff_max = Duration::from_millis(self.config.clickhouse.retry_backoff_max_ms);
        let mut backoff = interval;
        let mut schema_known = false;
        let mut failing = false;
        loop {
            match self.flush_once(&client, &mut schema_known).await {
                Ok(_) => {
                    if failing {
                        tracing::info!(url = %self.config.clickhouse.url, "ClickHouse inserts recovered");
                    }
                    failing = false;
                    backoff = interval;
                    tokio::time::sleep(interval).await;
                }
                Err(error) => {
                    failures.inc();
                    if !failing {
                        tracing::warn!(
                            url = %self.config.clickhouse.url,
                            error = format!("{error:#}"),
                            buffered = self.buffer.len(),
                            "ClickHouse insert failed; buffering"
                        );
                    }
                    failing = true;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(backoff_max);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: f64) -> SampleRow {
        SampleRow {
            time: 1,
            service: "s".into(),
            instance: "i".into(),
            name: "r3fs_test_x_total".into(),
            labels: String::new(),
            value,
        }
    }

    #[test]
    fn buffer_drops_oldest_beyond_bound_and_counts() {
        let registry = Registry::new();
        let buffer = Buffer::new(3, &registry);
        buffer.push((0..5).map(|i| row(i as f64)).collect());
        assert_eq!(buffer.len(), 3);
        assert_eq!(buffer.dropped(), 2);
        let batch = buffer.take(2);
        assert_eq!(batch.iter().map(|r| r.value).collect::<Vec<_>>(), vec![2.0, 3.0]);
        buffer.push(vec![row(5.0), row(6.0)]);
        // A failed batch goes back in front; the buffer is over its bound by 2, so the two
        // oldest (the batch) are dropped.
        buffer.put_back(batch);
        assert_eq!(
            buffer.take(10).iter().map(|r| r.value).collect::<Vec<_>>(),
            vec![4.0, 5.0, 6.0]
        );
        assert_eq!(buffer.dropped(), 4);
    }

    #[test]
    fn failed_batch_keeps_its_order() {
        let registry = Registry::new();
        let buffer = Buffer::new(10, &registry);
        buffer.push((0..4).map(|i| row(i as f64)).collect());
        let batch = buffer.take(3);
        buffer.put_back(batch);
        assert_eq!(
            buffer.take(10).iter().map(|r| r.value).collect::<Vec<_>>(),
            vec![0.0, 1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn push_needs_headers_and_valid_text() {
        let monitor = Monitor::new(MonitorConfig::default(), Registry::new());
        let request = |headers: Vec<(String, String)>, body: &str| Request {
            method: "POST".into(),
            path: "/push".into(),
            headers,
            body: body.as_bytes().to_vec(),
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let headers = vec![
            ("x-r3fs-service".to_string(), "storage".to_string()),
            ("x-r3fs-instance".to_string(), "node-1".to_string()),
        ];
        assert_eq!(monitor.handle(request(vec![], "a 1\n")).status, 400);
        assert_eq!(monitor.handle(request(headers.clone(), "a{ 1\n")).status, 400);
        assert_eq!(monitor.handle(request(headers, "r3fs_x_y_total{t=\"1\"} 3\n")).status, 204);
        let rows = monitor.buffer.take(10);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].service.as_str(), rows[0].instance.as_str()), ("storage", "node-1"));
        assert_eq!(rows[0].labels, "t=\"1\"");
        assert_eq!(rows[0].value, 3.0);
    }
}
