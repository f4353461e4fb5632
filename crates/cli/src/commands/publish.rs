//! `lora publish ADAPTER_DIR --repo org/name`: upload an adapter to the Hub in one commit
//! (repository created if needed, weights through LFS, model card completed) and print the
//! commit URL.

use std::path::PathBuf;

use anyhow::{Context, Result};
use lora_hub::{HubConfig, PublishOptions, UploadMode};

/// Publish an adapter folder to the Hugging Face Hub in one commit and print the commit URL.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The adapter folder (adapter_config.json, adapter_model.safetensors, README.md, ...).
    dir: PathBuf,
    /// The Hub repository to publish to: org/name.
    #[arg(long)]
    repo: String,
    /// Create the repository private (no effect if it exists).
    #[arg(long)]
    private: bool,
    /// The branch to commit to.
    #[arg(long, default_value = "main")]
    revision: String,
    /// The commit message.
    #[arg(long, short)]
    message: Option<String>,
    /// The base model's Hub id for the model card, when the card or adapter config name a local path.
    #[arg(long)]
    base_model: Option<String>,
}

/// Runs `lora publish`.
pub fn run(a: Args) -> Result<()> {
    let hub = HubConfig::from_env()?;
    let opts = PublishOptions {
        repo: a.repo.clone(),
        revision: a.revision,
        private: a.private,
        message: a.message,
        base_model: a.base_model,
    };
    let progress = crate::hub_refs::progress_bars();
    let published = lora_hub::publish_folder(&a.dir, &opts, &hub, &progress)
        .with_context(|| format!("publishing {} to {}", a.dir.display(), a.repo))?;
    for f in &published.files {
        let how = match f.mode {
            UploadMode::Lfs => "lfs",
            UploadMode::Regular => "inline",
            UploadMode::Ignore => "ignored",
        };
        eprintln!("  {:<40} {:>12} bytes  {how}", f.path, f.size);
    }
    if !published.card_filled.is_empty() {
        eprintln!("model card: filled {}", published.card_filled.join(", "));
    }
    eprintln!("{} {}", if published.created { "created" } else { "updated" }, published.repo_url);
    println!("{}", published.commit.url);
    Ok(())
}
