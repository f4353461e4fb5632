//! The files of an adapter folder that get published, with what the protocol needs of each
//! (size, sha256, the first 512 bytes as the preupload "sample").
//!
//! Published: the top-level regular files of the folder (adapter, config, model card, tokenizer
//! and run records such as metrics and the manifest); not hidden files, not sub-folders
//! (checkpoints), and never pickles.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{HubError, Result, io};

/// Where a file's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file on disk.
    File(PathBuf),
    /// Bytes made here (the completed model card).
    Memory(Vec<u8>),
}

/// One file to publish.
#[derive(Debug, Clone)]
pub struct LocalFile {
    /// Path in the repository.
    pub path: String,
    /// Its bytes.
    pub source: Source,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex sha256 (the LFS oid).
    pub sha256: String,
    /// The first 512 bytes, which the Hub uses to tell text from binary.
    pub sample: Vec<u8>,
}

impl LocalFile {
    /// Describes bytes in memory.
    pub fn from_memory(path: &str, bytes: Vec<u8>) -> LocalFile {
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let sample = bytes[..bytes.len().min(512)].to_vec();
        LocalFile { path: path.into(), size: bytes.len() as u64, sha256, sample, source: Source::Memory(bytes) }
    }

    /// Describes a file on disk, hashing it in one streaming pass.
    pub fn from_file(path_in_repo: &str, file: &Path) -> Result<LocalFile> {
        let mut f = std::fs::File::open(file).map_err(io(file))?;
        let mut hasher = Sha256::new();
        let mut sample = Vec::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf).map_err(io(file))?;
            if n == 0 {
                break;
            }
            if sample.len() < 512 {
                let take = (512 - sample.len()).min(n);
                sample.extend_from_slice(&buf[..take]);
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok(LocalFile {
            path: path_in_repo.into(),
            source: Source::File(file.to_path_buf()),
            size,
            sha256: format!("{:x}", hasher.finalize()),
            sample,
        })
    }
}

/// The names of the publishable files of `folder`, sorted; checks it is a PEFT adapter.
pub fn publishable(folder: &Path) -> Result<Vec<String>> {
    let err = |message: String| HubError::Publish { path: folder.to_path_buf(), message };
    let entries = std::fs::read_dir(folder).map_err(io(folder))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(folder))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = std::fs::metadata(entry.path()).map_err(io(entry.path()))?;
        if name.starts_with('.') || !meta.is_file() {
            continue;
        }
        if [".bin", ".pt", ".pth", ".pkl", ".ckpt"].iter().any(|e| name.ends_with(e)) {
            return Err(err(format!(
                "{name} is a pickle, which is never published (loading it can run code); remove it"
            )));
        }
        names.push(name);
    }
    for need in ["adapter_config.json", "adapter_model.safetensors"] {
        if !names.iter().any(|n| n == need) {
            return Err(err(format!("no {need}: not a PEFT adapter folder (train one with `lora train`)")));
        }
    }
    names.sort();
    Ok(names)
}
