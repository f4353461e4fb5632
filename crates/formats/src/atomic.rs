//! Whole-file writes that readers never see half done: the bytes go to a temporary file beside the
//! target (same file system, so the rename is atomic), which is renamed over the target once
//! complete. A crash leaves at most the temporary file, never a truncated target.

use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_path(path);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(FormatError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| FormatError::io(path, e))
}

/// Writes `path` through `write`, which writes the temporary file it is given, and a rename: for
/// files streamed out piece by piece rather than held whole in memory.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(FormatError::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| FormatError::io(path, e))
}

/// `NAME.tmp-PID` beside `path`.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}
