//! Progress of transfers, reported through a callback so that the library never prints: the CLI
//! renders the events as one progress bar per file.

use std::sync::Arc;

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the Hub into the cache.
    Download,
    /// From a folder to the Hub.
    Upload,
}

/// One progress event about one repository file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// A transfer of `total` bytes starts (again, after a retry).
    Start {
        /// Download or upload.
        direction: Direction,
        /// Path in the repository.
        file: &'a str,
        /// Size in bytes.
        total: u64,
    },
    /// `bytes` more bytes moved.
    Advance {
        /// Path in the repository.
        file: &'a str,
        /// Bytes since the last event.
        bytes: u64,
    },
    /// The file is done.
    Finish {
        /// Path in the repository.
        file: &'a str,
    },
    /// Nothing to move: the cache or the server already has the file.
    Skip {
        /// Download or upload.
        direction: Direction,
        /// Path in the repository.
        file: &'a str,
    },
}

/// A progress callback; cheap to clone.
pub type ProgressFn = Arc<dyn Fn(Progress<'_>) + Send + Sync>;

/// A callback that ignores everything.
pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}
