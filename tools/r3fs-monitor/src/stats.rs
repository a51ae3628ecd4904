//! Reading recent figures back (`r3fs stats`): the latest value of every series seen in the
//! last few seconds, from ClickHouse.

use crate::ClickHouseConfig;
use anyhow::Context;
use serde::Deserialize;

/// The latest value of one series.
#[derive(Clone, Debug, PartialEq, clickhouse::Row, Deserialize)]
pub struct LatestRow {
    pub name: String,
    pub service: String,
    pub instance: String,
    pub labels: String,
    /// Seconds since the epoch of the latest sample.
    pub time: u32,
    pub value: f64,
}

/// What to read.
#[derive(Clone, Debug)]
pub struct StatsQuery {
    /// Only samples newer than this many seconds.
    pub since_seconds: u32,
    /// Only metric names containing this text (empty = all).
    pub name_contains: String,
    /// Only this service (empty = all).
    pub service: String,
    /// Most rows returned.
    pub limit: u32,
}

/// The latest value per (name, service, instance, labels), sorted by name then instance.
/// Samples of one series within the same second (DateTime's resolution) tie on time; the
/// larger value wins, which for counters is the later one.
pub async fn latest(
    client: &clickhouse::Client,
    config: &ClickHouseConfig,
    query: &StatsQuery,
) -> anyhow::Result<Vec<LatestRow>> {
    // `?` binds escape the strings; database and table are validated identifiers.
    let sql = format!(
        "SELECT name, service, instance, labels, max(time) AS latest, argMax(value, (time, value)) \
         FROM {}.{} \
         WHERE time >= now() - ? AND position(name, ?) > 0 AND (? = '' OR service = ?) \
         GROUP BY name, service, instance, labels \
         ORDER BY name, service, instance, labels LIMIT ?",
        config.database, config.table
    );
    client
        .query(&sql)
        .bind(query.since_seconds)
        .bind(query.name_contains.as_str())
        .bind(query.service.as_str())
        .bind(query.service.as_str())
        .bind(query.limit)
        .fetch_all::<LatestRow>()
        .await
        .context("query recent samples")
}
