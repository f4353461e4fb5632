//! Model and adapter references on the command line: a folder, or a Hub id (`org/name[@rev]`)
//! resolved from the Hugging Face cache or downloaded into it, with progress bars on a terminal.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use lora_hub::{Direction, Progress, ProgressFn, ResolveOptions};

/// Resolution settings from the environment, `--offline`, and progress bars.
pub fn options(offline: bool) -> Result<ResolveOptions> {
    Ok(ResolveOptions::from_env()?.offline(offline).with_progress(progress_bars()))
}

/// The local folder of a model reference.
pub fn model(reference: &str, offline: bool) -> Result<PathBuf> {
    lora_hub::resolve_model(reference, &options(offline)?).with_context(|| format!("model '{reference}'"))
}

/// The local folder of an adapter reference.
pub fn adapter(reference: &str, offline: bool) -> Result<PathBuf> {
    lora_hub::resolve_adapter(reference, &options(offline)?).with_context(|| format!("adapter '{reference}'"))
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
