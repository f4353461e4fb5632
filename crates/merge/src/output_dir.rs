//! The output folder: built under a temporary name beside its destination and renamed when complete,
//! so an interrupted or failed merge never leaves something that looks like a model at OUT.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::dtype::DType;
use crate::error::{MergeError, Result};

/// Whether a file of the base folder is one lora rewrites or must not carry: the weights (written
/// anew), their index, `config.json` (rewritten with the output dtype), the model card (lora's own),
/// weights in other formats (stale after a merge), hidden files.
fn rewritten_or_dropped(name: &str) -> bool {
    const WEIGHT_SUFFIXES: &[&str] = &[
        ".safetensors",
        ".safetensors.index.json",
        ".bin",
        ".bin.index.json",
        ".pt",
        ".pth",
        ".ckpt",
        ".gguf",
        ".h5",
        ".msgpack",
        ".onnx",
    ];
    name.starts_with('.')
        || matches!(name, "config.json" | "README.md")
        || WEIGHT_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// A folder being written. Dropping it without [`OutputDir::commit`] removes the partial folder.
#[derive(Debug)]
pub struct OutputDir {
    dest: PathBuf,
    tmp: PathBuf,
    force: bool,
    committed: bool,
}

impl OutputDir {
    /// Starts writing `dest`. An existing `dest` is an error unless `force`, and is only replaced at
    /// commit. The work folder is `.NAME.partial` beside it; a stale one from an interrupted run is
    /// removed first.
    pub fn create(dest: impl AsRef<Path>, force: bool) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        if dest.exists() && !force {
            return Err(MergeError::output_exists(dest));
        }
        let name = dest
            .file_name()
            .ok_or_else(|| MergeError::folder(&dest, "the output path has no folder name"))?
            .to_string_lossy()
            .into_owned();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| MergeError::io(&parent, e))?;
        let tmp = parent.join(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| MergeError::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| MergeError::io(&tmp, e))?;
        Ok(Self { dest, tmp, force, committed: false })
    }

    /// Where to write files now.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final folder.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Copies every file of the folder `from` that lora does not rewrite: tokenizer files, chat
    /// templates, generation config, processor and preprocessor configs, licence, and the rest (the
    /// top level; subfolders are not model files). Returns their names.
    pub fn copy_side_files(&self, from: &Path) -> Result<Vec<String>> {
        let mut copied = Vec::new();
        let entries = std::fs::read_dir(from).map_err(|e| MergeError::io(from, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| MergeError::io(from, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let src = entry.path();
            if !src.is_file() || rewritten_or_dropped(&name) {
                continue;
            }
            std::fs::copy(&src, self.tmp.join(&name)).map_err(|e| MergeError::io(&src, e))?;
            copied.push(name);
        }
        copied.sort();
        Ok(copied)
    }

    /// Copies the files `names` of the folder `from` that exist there over the folder's own (an
    /// adapter's grown tokenizer over the base's).
    pub fn copy_files(&self, from: &Path, names: &[&str]) -> Result<()> {
        for name in names {
            let src = from.join(name);
            if src.is_file() {
                std::fs::copy(&src, self.tmp.join(name)).map_err(|e| MergeError::io(&src, e))?;
            }
        }
        Ok(())
    }

    /// Writes `config` as `config.json`, with its dtype set to `dtype` (transformers 5 reads `dtype`;
    /// older checkpoints carry `torch_dtype`, which is updated when present).
    pub fn write_config(&self, config: &Value, dtype: DType) -> Result<()> {
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            let name = Value::String(dtype.torch_name().into());
            if map.contains_key("torch_dtype") {
                map.insert("torch_dtype".into(), name.clone());
            }
            if map.contains_key("dtype") || !map.contains_key("torch_dtype") {
                map.insert("dtype".into(), name);
            }
        }
        self.write_json("config.json", &config)
    }

    /// Writes `value` as pretty JSON to `name` in the folder.
    pub fn write_json(&self, name: &str, value: &Value) -> Result<()> {
        let path = self.tmp.join(name);
        let text = serde_json::to_string_pretty(value).expect("json");
        std::fs::write(&path, text + "\n").map_err(|e| MergeError::io(&path, e))
    }

    /// Writes a text file to the folder.
    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        let path = self.tmp.join(name);
        std::fs::write(&path, text).map_err(|e| MergeError::io(&path, e))
    }

    /// Moves the finished folder to its destination (replacing an existing one when forced).
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.dest.exists() {
            if !self.force {
                return Err(MergeError::output_exists(&self.dest));
            }
            let r =
                if self.dest.is_dir() { std::fs::remove_dir_all(&self.dest) } else { std::fs::remove_file(&self.dest) };
            r.map_err(|e| MergeError::io(&self.dest, e))?;
        }
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| MergeError::io(&self.dest, e))?;
        self.committed = true;
        Ok(self.dest.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
