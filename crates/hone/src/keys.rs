//! `hone keys …`: API keys managed against the database, for operators. A key's secret
//! is printed once, on stdout (so `export HONE_API_KEY=$(hone keys create …)` works),
//! and never stored.

use anyhow::{bail, Context};
use clap::Subcommand;
use hone_store::{Db, StoreError};

#[derive(Subcommand, Clone, PartialEq, Eq)]
pub enum KeysCommand {
    /// Make a key for a project (created when missing); prints the key once.
    Create {
        /// The project's name: 1 to 64 of a-z, 0-9, `-`, `_`.
        #[arg(long)]
        project: String,
    },
    /// Every key: id, project, prefix, created, last used, revoked. Never the secret.
    List,
    /// Revoke a key by its id (`key-…`): requests with it are refused within
    /// `api_key_cache_ms` (5 s), the time a running server remembers a key.
    Revoke {
        /// The key's id, as `hone keys list` shows it.
        id: String,
    },
}

pub async fn run(db: &Db, command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Create { project } => {
            if !hone_domain::api_key::valid_project_name(&project) {
                bail!("--project must be 1 to 64 of a-z, 0-9, `-` and `_`, not {project:?}");
            }
            let found = db.ensure_project(&project).await?;
            let key = db.create_api_key(&found.id).await?;
            println!("{}", key.expose());
            eprintln!(
                "hone: created API key {} for project {project:?}; it is shown only this once",
                key.id
            );
        }
        KeysCommand::List => {
            let keys = db.list_api_keys().await?;
            let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(
                    || "-".to_owned(),
                    |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                )
            };
            println!(
                "{:<38} {:<20} {:<16} {:<20} {:<20} REVOKED",
                "ID", "PROJECT", "PREFIX", "CREATED", "LAST USED"
            );
            for k in keys {
                println!(
                    "{:<38} {:<20} {:<16} {:<20} {:<20} {}",
                    k.id,
                    k.project,
                    format!("{}…", k.prefix),
                    when(Some(k.created_at)),
                    when(k.last_used_at),
                    when(k.revoked_at)
                );
            }
        }
        KeysCommand::Revoke { id } => match db.revoke_api_key(&id).await {
            Ok(()) => eprintln!(
                "hone: revoked API key {id}; running servers refuse it within \
                 api_key_cache_ms (5 s by default)"
            ),
            Err(StoreError::NotFound) => bail!("no API key with id {id:?}; see `hone keys list`"),
            Err(e) => return Err(e).context("cannot revoke the key"),
        },
    }
    Ok(())
}

/// On the first start of a fresh install (no key at all), makes a key for the
/// `default` project and prints it once, so the quick start needs no other step.
pub async fn bootstrap(db: &Db) -> anyhow::Result<()> {
    let Some(key) = db
        .bootstrap_api_key()
        .await
        .context("cannot create the first API key")?
    else {
        return Ok(());
    };
    let rule = "=".repeat(72);
    println!(
        "{rule}\nhone: first start: an API key for project \"default\", shown only this once.\n\
         Keep it; requests send it as `Authorization: Bearer $HONE_API_KEY`.\n\n    \
         export HONE_API_KEY={}\n\n\
         More keys: `hone keys create --project NAME`; list/revoke: `hone keys list|revoke`.\n{rule}",
        key.expose()
    );
    tracing::info!(key.id = %key.id, "created the first API key (project default)");
    Ok(())
}
