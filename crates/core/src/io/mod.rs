//! Loading and saving: a model folder's [`weights`] (safetensors, sharded, memory-mapped) or a GGUF
//! file ([`gguf`]), a table left in its file and read by rows ([`file_rows`]), the [`load_options`] that say how the base is held (dtype, NF4), the
//! [`tokenizer`], atomic [`safetensors_write`]s, and the [`random_model`] writer used by tests and
//! benchmarks. Everything above reads a model through here.

pub mod file_rows;
pub mod gguf;
pub mod load_options;
pub mod random_model;
pub mod safetensors_write;
pub mod tokenizer;
pub mod weights;
