//! A minimal front end to the merge engine without the CLI crate (and so without burn), for timing
//! the engine alone: `merge config FILE OUT` or `merge fold BASE ADAPTER OUT`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let t = std::time::Instant::now();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["config", cfg, out] => {
            let opts = lora_merge::MergeOptions { force: true, ..Default::default() };
            lora_merge::merge_models(&PathBuf::from(cfg), &PathBuf::from(out), &opts)?;
        }
        ["fold", base, adapter, out] => {
            let opts = lora_merge::FoldOptions { force: true, ..Default::default() };
            lora_merge::fold_adapters(&PathBuf::from(base), &[PathBuf::from(adapter)], &PathBuf::from(out), &opts)?;
        }
        _ => return Err("usage: merge config FILE OUT | merge fold BASE ADAPTER OUT".into()),
    }
    eprintln!("{:.2} s", t.elapsed().as_secs_f64());
    Ok(())
}
