//! Where the Hub and its cache are: the settings huggingface_hub reads from the environment.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `HF_ENDPOINT` | the Hub's base URL | `https://huggingface.co` |
//! | `HF_HUB_CACHE` | the cache folder (`models--org--name/...`) | `$HF_HOME/hub` |
//! | `HF_HOME` | home of the cache and the token file | `~/.cache/huggingface` |
//! | `HF_HUB_OFFLINE` | `1`/`true`/`yes`/`on`: never touch the network | off |
//! | `HF_TOKEN` | access token | the file `$HF_HOME/token` |

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{HubError, Result};
use crate::token::Token;

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// How transient failures (5xx, 429, refused or reset connections) are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubles after each failure.
    pub base_delay: Duration,
    /// Upper bound of one wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, base_delay: Duration::from_millis(500), max_delay: Duration::from_secs(8) }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt number `failed` (1-based): base · 2^(failed−1), capped.
    pub fn delay(&self, failed: u32) -> Duration {
        let factor = 1u32.checked_shl(failed.saturating_sub(1).min(16)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Everything the client needs to know about the Hub and the cache.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL without a trailing slash, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// The cache folder holding `models--org--name` folders.
    pub cache_dir: PathBuf,
    /// Where the token file is (reported when a token is needed and missing).
    pub token_file: PathBuf,
    /// The access token, sent only to `endpoint`. `None` sends no token of lora's; hf-hub, which
    /// makes the Hub requests, then looks for one itself in `HF_TOKEN`, `HF_TOKEN_PATH` and
    /// `$HF_HOME/token` (the places [`HubConfig::from_env`] reads, so the CLI's two readings agree),
    /// unless `HF_HUB_DISABLE_IMPLICIT_TOKEN` is set, as huggingface_hub does.
    pub token: Option<Token>,
    /// Never touch the network.
    pub offline: bool,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl HubConfig {
    /// Reads `HF_ENDPOINT`, `HF_HUB_CACHE`, `HF_HOME`, `HF_HUB_OFFLINE` and `HF_TOKEN` (or the token
    /// file) as huggingface_hub does.
    pub fn from_env() -> Result<HubConfig> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let hf_home = match var("HF_HOME") {
            Some(h) => PathBuf::from(h),
            None => match var("XDG_CACHE_HOME") {
                Some(x) => PathBuf::from(x).join("huggingface"),
                None => home_dir().join(".cache").join("huggingface"),
            },
        };
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| hf_home.join("hub"));
        let token_file = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| hf_home.join("token"));
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let offline = match var("HF_HUB_OFFLINE") {
            None => false,
            Some(v) => parse_bool("HF_HUB_OFFLINE", &v)?,
        };
        let token = Token::from_env_or_file(&token_file);
        HubConfig::new(endpoint, cache_dir, token_file, token, offline)
    }

    /// A configuration with explicit values; checks that the endpoint is an http(s) URL.
    pub fn new(
        endpoint: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
        token_file: impl Into<PathBuf>,
        token: Option<Token>,
        offline: bool,
    ) -> Result<HubConfig> {
        let endpoint = endpoint.into().trim_end_matches('/').to_string();
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(HubError::Env {
                name: "HF_ENDPOINT",
                value: endpoint,
                message: "the endpoint must be an http:// or https:// URL".into(),
            });
        }
        Ok(HubConfig {
            endpoint,
            cache_dir: cache_dir.into(),
            token_file: token_file.into(),
            token,
            offline,
            retry: RetryPolicy::default(),
        })
    }
}

fn parse_bool(name: &'static str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(HubError::Env { name, value: v.into(), message: "expected 1/0, true/false, yes/no or on/off".into() }),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map(PathBuf::from)
        .unwrap_or_else(|| ".".into())
}
