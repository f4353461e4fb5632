//! Bounded memory for Xet transfers.
//!
//! hf-xet (under hf-hub) sizes its buffers from the machine: a download may buffer up to a quarter
//! of the memory (6 GB on a 24 GB machine; a 2 GB file then peaked at 1 GB), and an upload keeps up
//! to 64 chunk blocks ("xorbs", 64 MB each) in flight as its concurrency grows. lora runs beside
//! training jobs on small machines, so it asks for less: a download buffer of at most 256 MB and at
//! most 4 xorb uploads at once. Measured against the loopback fake (`scripts/bench_hub.sh`), the
//! bounded settings cost no time there: transfers on two cores are bound by hashing and disk.
//!
//! hf-hub builds hf-xet's configuration from the environment only (`HF_XET_{GROUP}_{FIELD}`), when it
//! starts its first Xet session, so these are environment defaults: [`xet_memory_defaults`] says
//! which to set, and a binary sets them at its start, before any thread exists (lora's CLI does).
//! A variable the user set wins, and `HF_XET_HIGH_PERFORMANCE` / `HF_XET_HP` (hf-xet's own preset
//! for large machines) turn all of lora's defaults off.

/// The settings lora bounds: hf-xet's configuration group, field and lora's value.
pub const XET_MEMORY_SETTINGS: [(&str, &str, &str); 4] = [
    // Download buffer always available, plus per file being downloaded, up to the limit.
    ("reconstruction", "download_buffer_size", "128mb"),
    ("reconstruction", "download_buffer_perfile_size", "64mb"),
    ("reconstruction", "download_buffer_limit", "512mb"),
    // Xorbs uploaded at once (each held in memory while it is sent).
    ("client", "ac_max_upload_concurrency", "4"),
];

/// Variables that select hf-xet's high-performance preset; when one is set, lora sets nothing.
const HIGH_PERFORMANCE: [&str; 2] = ["HF_XET_HIGH_PERFORMANCE", "HF_XET_HP"];

/// The environment variable hf-xet reads for `group.field`.
pub fn xet_variable(group: &str, field: &str) -> String {
    format!("HF_XET_{}_{}", group.to_uppercase(), field.to_uppercase())
}

/// The variables to set, with their values, in an environment read through `get`: every setting of
/// [`XET_MEMORY_SETTINGS`] whose variable is unset, and none when the high-performance preset is
/// asked for.
pub fn xet_memory_defaults(get: impl Fn(&str) -> Option<String>) -> Vec<(String, &'static str)> {
    if HIGH_PERFORMANCE.iter().any(|v| get(v).is_some()) {
        return Vec::new();
    }
    XET_MEMORY_SETTINGS
        .iter()
        .map(|&(group, field, value)| (xet_variable(group, field), value))
        .filter(|(name, _)| get(name).is_none())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn an_empty_environment_gets_every_bound() {
        let set = xet_memory_defaults(env(&[]));
        let names: Vec<&str> = set.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_SIZE",
                "HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_PERFILE_SIZE",
                "HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_LIMIT",
                "HF_XET_CLIENT_AC_MAX_UPLOAD_CONCURRENCY",
            ]
        );
        assert_eq!(set[2].1, "512mb");
    }

    #[test]
    fn a_variable_the_user_set_is_left_alone() {
        let set = xet_memory_defaults(env(&[("HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_LIMIT", "2gb")]));
        assert_eq!(set.len(), 3);
        assert!(set.iter().all(|(n, _)| n != "HF_XET_RECONSTRUCTION_DOWNLOAD_BUFFER_LIMIT"));
    }

    #[test]
    fn the_high_performance_preset_turns_every_bound_off() {
        assert!(xet_memory_defaults(env(&[("HF_XET_HIGH_PERFORMANCE", "1")])).is_empty());
        assert!(xet_memory_defaults(env(&[("HF_XET_HP", "true")])).is_empty());
    }

    /// The names and values are hf-xet's: its configuration takes each value at the dotted path,
    /// and its own environment reading finds it under the name lora sets.
    #[cfg(feature = "fake-hub")]
    #[test]
    fn every_setting_is_one_hf_xet_has() {
        use xet_runtime::config::XetConfig;
        let defaults = XetConfig::default();
        for (group, field, value) in XET_MEMORY_SETTINGS {
            let path = format!("{group}.{field}");
            let config = XetConfig::default()
                .with_config(&path, value)
                .unwrap_or_else(|e| panic!("hf-xet has no setting {path} taking {value}: {e:?}"));
            assert_ne!(format!("{config:?}"), format!("{defaults:?}"), "{path} = {value} changed nothing");
        }
    }
}
