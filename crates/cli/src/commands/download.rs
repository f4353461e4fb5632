//! `lora download ID [--revision R]`: fetch a model or adapter from the Hub into the Hugging Face
//! cache (reusing what is there) and print its local folder.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lora_hub::{Direction, HubConfig, Progress, ProgressFn, RepoId, RepoKind};

/// Arguments of `lora download`.
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

/// Renders the library's progress events as one indicatif bar per file on stderr (nothing when
/// stderr is not a terminal).
pub fn progress_bars() -> ProgressFn {
    let target =
        if std::io::stderr().is_terminal() { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let multi = MultiProgress::with_draw_target(target);
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template("{prefix} {msg:40!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
        .expect("valid template");
    Arc::new(move |p: Progress<'_>| {
        let mut bars = bars.lock().expect("progress lock");
        match p {
            Progress::Start { direction, file, total } => {
                let bar = bars.entry(file.to_string()).or_insert_with(|| multi.add(ProgressBar::new(total)));
                bar.set_style(style.clone());
                bar.set_prefix(if direction == Direction::Download { "↓" } else { "↑" });
                bar.set_message(file.to_string());
                bar.set_length(total);
                bar.set_position(0);
            }
            Progress::Advance { file, bytes } => {
                if let Some(b) = bars.get(file) {
                    b.inc(bytes);
                }
            }
            Progress::Finish { file } => {
                if let Some(b) = bars.get(file) {
                    b.finish();
                }
            }
            Progress::Skip { .. } => {}
        }
    })
}
