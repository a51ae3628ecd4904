//! `set-config`, `get-config` (configs are TOML text that mgmtd versions per node type).

use super::ctx::{Ctx, read_input_file};
use super::view::{ConfigView, parse_node_type};
use anyhow::{Context, bail};
use clap::Args;
use r3fs::output::{Table, format_utc_ms};
use r3fs_rpc::{admin, mgmtd as pb};
use std::path::PathBuf;

/// mgmtd stores configs of at most 64 KiB (admin.proto).
pub const CONFIG_BYTES_MAX: u64 = 64 << 10;

#[derive(Debug, Args)]
pub struct SetConfigArgs {
    /// Node type the config is for: MGMTD, META, STORAGE or CLIENT.
    #[arg(long = "type", value_name = "NODE_TYPE")]
    pub node_type: String,
    /// TOML file (at most 64 KiB).
    #[arg(long)]
    pub file: PathBuf,
    /// Description stored with this version.
    #[arg(long = "desc", default_value = "")]
    pub description: String,
}

#[derive(Debug, Args)]
pub struct GetConfigArgs {
    /// Node type: MGMTD, META, STORAGE or CLIENT.
    #[arg(long = "type", value_name = "NODE_TYPE")]
    pub node_type: String,
    /// Version to print (default: the latest).
    #[arg(long, conflicts_with = "list")]
    pub version: Option<u64>,
    /// Write the content to this file instead of stdout.
    #[arg(long, short = 'o', value_name = "PATH", conflicts_with = "list")]
    pub output: Option<PathBuf>,
    /// List the versions instead of printing one.
    #[arg(long)]
    pub list: bool,
}

pub async fn set_config(ctx: &Ctx, args: SetConfigArgs) -> anyhow::Result<()> {
    let node_type = parse_node_type(&args.node_type)?;
    let content = read_input_file(&args.file, "config file", CONFIG_BYTES_MAX)?;
    // Catch a broken file here, with its line and column, rather than as mgmtd's refusal.
    if let Err(error) = content.parse::<toml::Table>() {
        bail!("config file {} is not valid TOML: {error}", args.file.display());
    }
    let mgmtd = ctx.client()?;
    let request = admin::SetConfigRequest {
        node_type: node_type as i32,
        content,
        description: args.description.clone(),
    };
    let response = mgmtd
        .client
        .set_config(request)
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| {
            format!("set the {} config from {}", args.node_type.to_uppercase(), args.file.display())
        })?;
    if ctx.json() {
        return ctx.print_json(&serde_json::json!({
            "node_type": args.node_type.to_uppercase(),
            "version": response.version,
        }));
    }
    println!("Stored {} config version {}.", args.node_type.to_uppercase(), response.version);
    Ok(())
}

pub async fn get_config(ctx: &Ctx, args: GetConfigArgs) -> anyhow::Result<()> {
    let node_type = parse_node_type(&args.node_type)?;
    let mgmtd = ctx.client()?;
    let name = args.node_type.to_uppercase();
    if args.list {
        let response = mgmtd
            .client
            .list_config_versions(pb::ListConfigVersionsRequest { node_type: node_type as i32 })
            .await
            .map_err(|status| mgmtd.error(status))
            .with_context(|| format!("list the {name} config versions"))?;
        let views: Vec<ConfigView> =
            response.versions.iter().map(|v| ConfigView::new(v, false)).collect();
        if ctx.json() {
            return ctx.print_json(&views);
        }
        let mut table = Table::new(&["Type", "Version", "Created", "Desc"]);
        for v in &views {
            table.row(vec![
                v.node_type.clone(),
                v.version.to_string(),
                format_utc_ms(v.created_unix_ms),
                v.description.clone(),
            ]);
        }
        print!("{}", table.render());
        return Ok(());
    }
    let response = mgmtd
        .client
        .get_config(pb::GetConfigRequest {
            node_type: node_type as i32,
            version: args.version.unwrap_or(0),
        })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| match args.version {
            Some(version) => format!("get the {name} config version {version}"),
            None => format!("get the latest {name} config"),
        })?;
    if let Some(path) = &args.output {
        std::fs::write(path, &response.content)
            .with_context(|| format!("write the config to {}", path.display()))?;
    }
    if ctx.json() {
        return ctx.print_json(&ConfigView::new(&response, true));
    }
    match &args.output {
        Some(path) => {
            println!("Wrote {name} config version {} to {}.", response.version, path.display())
        }
        None => print!("{}", response.content),
    }
    Ok(())
}
