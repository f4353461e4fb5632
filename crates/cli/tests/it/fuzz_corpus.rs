//! The fuzz targets' seed corpora and every crash the fuzzers found, run as ordinary tests through
//! the same entry points (crates/fuzzing): none may panic; `seed-bad-*` inputs must be refused and
//! the other seeds accepted, so that a target whose reader stopped reading anything would show.

use std::path::Path;

fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn seed_corpora_and_fuzz_regressions_read_without_panics() {
    let fuzz = crate::common::root().join("fuzz");
    for (name, read) in lora_fuzzing::TARGETS {
        let seeds: Vec<_> = files(&fuzz.join("corpus").join(name))
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("seed-"))
            .collect();
        assert!(seeds.len() >= 2, "{name}: {} seeds", seeds.len());
        for seed in &seeds {
            let bad = seed.file_name().unwrap().to_string_lossy().starts_with("seed-bad-");
            let accepted = read(&std::fs::read(seed).unwrap());
            assert_eq!(accepted, !bad, "{name}: {} accepted = {accepted}", seed.display());
        }
        // Crashes found by the fuzzers, kept as regressions: reading them must return, and those
        // named `bad-*` must be refused.
        for crash in files(&fuzz.join("regressions").join(name)) {
            let accepted = read(&std::fs::read(&crash).unwrap());
            let bad = crash.file_name().unwrap().to_string_lossy().starts_with("bad-");
            assert!(!(bad && accepted), "{name}: {} was accepted", crash.display());
        }
    }
}
