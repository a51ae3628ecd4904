//! `stats`: recent metric figures read back from the ClickHouse that r3fs-monitor fills (the
//! latest value of every series seen in the last `--since-seconds`). Needs no mgmtd.

use super::ctx::Ctx;
use anyhow::Context;
use clap::Args;
use r3fs::output::{Table, format_utc_ms};
use r3fs_monitor::ClickHouseConfig;
use r3fs_monitor::stats::{StatsQuery, latest};
use serde::Serialize;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// ClickHouse HTTP URL (the monitor's `clickhouse.url`).
    #[arg(long, env = "R3FS_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    pub clickhouse_url: String,
    /// Database the monitor writes (`clickhouse.database`).
    #[arg(long, default_value = "r3fs")]
    pub database: String,
    /// Table the monitor writes (`clickhouse.table`).
    #[arg(long, default_value = "samples")]
    pub table: String,
    /// ClickHouse user (empty = default).
    #[arg(long, env = "R3FS_CLICKHOUSE_USER", default_value = "")]
    pub user: String,
    /// ClickHouse password.
    #[arg(long, env = "R3FS_CLICKHOUSE_PASSWORD", default_value = "", hide_env_values = true)]
    pub password: String,
    /// Only series with a sample newer than this.
    #[arg(long, default_value_t = 300)]
    pub since_seconds: u32,
    /// Only metric names containing this text (e.g. `write_latency`).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Only this service (`storage`, `mgmtd`, `meta`, `fuse`, `monitor`).
    #[arg(long, default_value = "")]
    pub service: String,
    /// Most rows printed.
    #[arg(long, default_value_t = 500)]
    pub limit: u32,
}

#[derive(Serialize)]
struct StatView {
    name: String,
    service: String,
    instance: String,
    labels: String,
    time_unix: u32,
    value: f64,
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.3}")
    }
}

pub async fn stats(ctx: &Ctx, args: StatsArgs) -> anyhow::Result<()> {
    let config = ClickHouseConfig {
        url: args.clickhouse_url.clone(),
        database: args.database.clone(),
        table: args.table.clone(),
        user: args.user.clone(),
        password: args.password.clone(),
        ..ClickHouseConfig::default()
    };
    let valid_identifier = |s: &str| {
        !s.is_empty()
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    anyhow::ensure!(
        valid_identifier(&config.database) && valid_identifier(&config.table),
        "--database and --table must be identifiers ([A-Za-z_][A-Za-z0-9_]*)"
    );
    let client = r3fs_monitor::client(&config);
    let query = StatsQuery {
        since_seconds: args.since_seconds,
        name_contains: args.name.clone(),
        service: args.service.clone(),
        limit: args.limit,
    };
    let rows = latest(&client, &config, &query)
        .await
        .with_context(|| format!("read recent samples from {}", config.url))?;
    if ctx.json() {
        let views: Vec<StatView> = rows
            .into_iter()
            .map(|r| StatView {
                name: r.name,
                service: r.service,
                instance: r.instance,
                labels: r.labels,
                time_unix: r.time,
                value: r.value,
            })
            .collect();
        return ctx.print_json(&views);
    }
    let mut table = Table::new(&["NAME", "SERVICE", "INSTANCE", "LABELS", "VALUE", "AT (UTC)"]);
    for row in rows {
        table.row(vec![
            row.name,
            row.service,
            row.instance,
            row.labels,
            format_value(row.value),
            format_utc_ms(u64::from(row.time) * 1000),
        ]);
    }
    if table.is_empty() {
        println!("no samples in the last {} s", args.since_seconds);
    } else {
        print!("{}", table.render());
    }
    Ok(())
}
