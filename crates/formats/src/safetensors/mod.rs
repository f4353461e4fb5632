//! Reading and writing safetensors files, without loading them whole.

mod reader;
mod writer;

pub use reader::*;
pub use writer::*;
