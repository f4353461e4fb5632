//! The Hugging Face Hub for lora: model and adapter references by Hub id, resolved from the
//! Hugging Face cache (shared with Python tools) or downloaded into it; offline mode; and
//! publishing adapters in one commit through the Hub's HTTP API.
//!
//! - [`resolve_model`] / [`resolve_adapter`]: a reference (`DIR`, `org/name`, `org/name@rev`) to a
//!   local folder.
//! - [`download`]: fetch a repository into the cache ([`cached`] looks without the network).
//! - [`publish_folder`]: upload an adapter folder in one commit (Xet through hf-hub, or the LFS
//!   basic transfer for Hubs without Xet).
//!
//! The library never prints: progress comes through a [`ProgressFn`] callback. The token is sent
//! only to the configured endpoint and never appears in errors or reports ([`Token`] prints as
//! `***`). The API is synchronous: Hub calls go through hf-hub 1.0's blocking client (its tokio
//! runtime on a thread of its own), the LFS basic transfer through `ureq`; rustls, no OpenSSL.

#![warn(missing_docs)]

mod cache;
mod config;
mod download;
mod error;
mod files;
mod hf;
mod http;
mod model_card;
mod progress;
mod reference;
mod resolve;
mod token;
mod upload;
mod xet_memory;

#[cfg(feature = "fake-hub")]
pub mod fake_hub;

pub use cache::{CacheRepo, is_commit_sha};
pub use config::{DEFAULT_ENDPOINT, HubConfig, RetryPolicy};
pub use download::{Snapshot, cached, download};
pub use error::{HubError, Result};
pub use files::RepoKind;
pub use model_card::{ModelCard, complete as complete_model_card};
pub use progress::{Direction, Progress, ProgressFn, no_progress};
pub use reference::{Reference, RepoId};
pub use resolve::{ResolveOptions, resolve, resolve_adapter, resolve_model};
pub use token::Token;
pub use upload::{Commit, PublishOptions, Published, PublishedFile, UploadMode, publish_folder};
pub use xet_memory::{XET_MEMORY_SETTINGS, xet_memory_defaults, xet_variable};
