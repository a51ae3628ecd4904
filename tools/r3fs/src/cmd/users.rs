//! `user-add`, `user-list`, `user-remove`.

use super::ctx::{Ctx, write_secret_file};
use super::view::UserView;
use anyhow::{Context, bail};
use clap::Args;
use r3fs::output::{Table, format_utc_ms};
use r3fs_rpc::admin;
use serde::Serialize;
use std::path::PathBuf;

/// mgmtd's limit on user names (admin.proto).
pub const USER_NAME_BYTES_MAX: usize = 64;

#[derive(Debug, Args)]
pub struct UserAddArgs {
    /// Unique user name (at most 64 bytes).
    pub name: String,
    /// Unique user id.
    #[arg(long)]
    pub uid: u32,
    /// Primary group id (defaults to the uid).
    #[arg(long)]
    pub gid: Option<u32>,
    /// Supplementary group ids, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<u32>,
    /// May run mutating admin commands.
    #[arg(long)]
    pub admin: bool,
    /// Also write the new token to this file (created with mode 0600; never overwritten).
    #[arg(long, value_name = "PATH")]
    pub token_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct UserRemoveArgs {
    /// The user's name.
    pub name: Option<String>,
    /// The user's id (instead of the name).
    #[arg(long)]
    pub uid: Option<u32>,
}

#[derive(Serialize)]
struct UserAddOutput {
    user: Option<UserView>,
    token: String,
}

pub async fn user_add(ctx: &Ctx, args: UserAddArgs) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.len() > USER_NAME_BYTES_MAX {
        bail!("a user name must have 1 to {USER_NAME_BYTES_MAX} bytes");
    }
    let mgmtd = ctx.client()?;
    let request = admin::AddUserRequest {
        name: args.name.clone(),
        uid: args.uid,
        gid: args.gid.unwrap_or(args.uid),
        groups: args.groups.clone(),
        admin: args.admin,
    };
    let response = mgmtd
        .client
        .add_user(request)
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| format!("add user {}", args.name))?;
    if let Some(path) = &args.token_out {
        write_secret_file(path, &response.token)?;
    }
    if ctx.json() {
        return ctx.print_json(&UserAddOutput {
            user: response.user.as_ref().map(UserView::from),
            token: response.token,
        });
    }
    println!(
        "Added {}user {} (uid {}). Token (shown only this once):",
        if args.admin { "admin " } else { "" },
        args.name,
        args.uid
    );
    println!("{}", response.token);
    Ok(())
}

async fn list(ctx: &Ctx) -> anyhow::Result<Vec<UserView>> {
    let mgmtd = ctx.client()?;
    let response = mgmtd
        .client
        .list_users(admin::ListUsersRequest {})
        .await
        .map_err(|status| mgmtd.error(status))
        .context("list users")?;
    Ok(response.users.iter().map(UserView::from).collect())
}

pub async fn user_list(ctx: &Ctx) -> anyhow::Result<()> {
    let users = list(ctx).await?;
    if ctx.json() {
        return ctx.print_json(&users);
    }
    let mut table = Table::new(&["Uid", "Name", "Gid", "Groups", "Admin", "Created"]);
    for user in &users {
        let groups: Vec<String> = user.groups.iter().map(u32::to_string).collect();
        table.row(vec![
            user.uid.to_string(),
            user.name.clone(),
            user.gid.to_string(),
            if groups.is_empty() { "-".into() } else { groups.join(",") },
            if user.admin { "yes".into() } else { "no".into() },
            format_utc_ms(user.created_unix_ms),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn user_remove(ctx: &Ctx, args: UserRemoveArgs) -> anyhow::Result<()> {
    let (uid, label) = match (args.uid, &args.name) {
        (Some(uid), _) => (uid, format!("uid {uid}")),
        (None, Some(name)) => {
            let users = list(ctx).await.with_context(|| format!("find user {name}"))?;
            let Some(user) = users.iter().find(|u| &u.name == name) else {
                bail!("no user named {name:?} (see user-list)");
            };
            (user.uid, format!("{name} (uid {})", user.uid))
        }
        (None, None) => bail!("name a user, or pass --uid"),
    };
    let mgmtd = ctx.client()?;
    mgmtd
        .client
        .remove_user(admin::RemoveUserRequest { uid })
        .await
        .map_err(|status| mgmtd.error(status))
        .with_context(|| format!("remove user {label}"))?;
    if ctx.json() {
        return ctx.print_json(&serde_json::json!({ "removed_uid": uid }));
    }
    println!("Removed user {label}.");
    Ok(())
}
