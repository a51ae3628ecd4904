//! `init-cluster`: creates the admin user and prints its token, once.

use super::ctx::{Ctx, write_secret_file};
use super::view::UserView;
use anyhow::Context;
use clap::Args;
use r3fs_rpc::admin;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct InitClusterArgs {
    /// Free-form cluster name, stored by mgmtd.
    #[arg(long, default_value = "r3fs")]
    pub cluster_id: String,
    /// Name of the admin user.
    #[arg(long, default_value = "root")]
    pub admin_name: String,
    #[arg(long, default_value_t = 0)]
    pub admin_uid: u32,
    #[arg(long, default_value_t = 0)]
    pub admin_gid: u32,
    /// Also write the admin token to this file (created with mode 0600; never overwritten).
    #[arg(long, value_name = "PATH")]
    pub token_out: Option<PathBuf>,
}

#[derive(Serialize)]
struct InitClusterOutput {
    admin: Option<UserView>,
    admin_token: String,
}

pub async fn init_cluster(ctx: &Ctx, args: InitClusterArgs) -> anyhow::Result<()> {
    let mgmtd = ctx.client()?;
    let request = admin::InitClusterRequest {
        cluster_id: args.cluster_id.clone(),
        admin_name: args.admin_name.clone(),
        admin_uid: args.admin_uid,
        admin_gid: args.admin_gid,
    };
    let response = mgmtd
        .client
        .init_cluster(request)
        .await
        .map_err(|status| mgmtd.error(status))
        .context("initialize the cluster")?;
    if let Some(path) = &args.token_out {
        write_secret_file(path, &response.admin_token)?;
    }
    if ctx.json() {
        return ctx.print_json(&InitClusterOutput {
            admin: response.admin.as_ref().map(UserView::from),
            admin_token: response.admin_token,
        });
    }
    let name = response.admin.as_ref().map_or(args.admin_name.as_str(), |u| u.name.as_str());
    println!(
        "Initialized cluster {:?}; admin user {name} (uid {}).",
        args.cluster_id, args.admin_uid
    );
    println!("Admin token (shown only this once; store it safely):");
    println!("{}", response.admin_token);
    if let Some(path) = &args.token_out {
        println!("Also written to {}.", path.display());
    }
    Ok(())
}
