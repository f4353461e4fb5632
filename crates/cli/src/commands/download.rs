//! `lora download ID [--revision R]`: fetch a model or adapter from the Hub into the Hugging Face
//! cache (reusing what is there) and print its local folder.

use anyhow::{Context, Result};
use lora_hub::{HubConfig, RepoId, RepoKind};

use crate::hub_refs::progress_bars;

/// Fetch a model or adapter from the Hugging Face Hub into the HF cache and print its folder.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The repository: org/name, or org/name@revision.
    id: String,
    /// Branch, tag or commit (overrides an @revision in ID).
    #[arg(long)]
    revision: Option<String>,
    /// What the repository must hold: a model, an adapter, or either.
    #[arg(long, value_enum, default_value = "any")]
    kind: Kind,
    /// Never touch the network: check the cache only (as HF_HUB_OFFLINE=1).
    #[arg(long)]
    offline: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Kind {
    Model,
    Adapter,
    Any,
}

/// Runs `lora download`.
pub fn run(a: Args) -> Result<()> {
    let mut repo = RepoId::parse(&a.id)?;
    if let Some(r) = a.revision {
        repo.revision = r;
    }
    let mut hub = HubConfig::from_env()?;
    hub.offline |= a.offline;
    let kind = match a.kind {
        Kind::Model => RepoKind::Model,
        Kind::Adapter => RepoKind::Adapter,
        Kind::Any => RepoKind::Any,
    };
    let snapshot =
        lora_hub::download(&repo, kind, &hub, &progress_bars()).with_context(|| format!("downloading {repo}"))?;
    println!("{}", snapshot.path.display());
    Ok(())
}
