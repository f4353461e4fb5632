//! Quantized base weights. NF4 on the host (quantize, dequantize, double quantization,
//! bitsandbytes' byte layout) is a file format and lives in `lora_formats::nf4`, re-exported here as
//! [`nf4`]; [`nf4_device`] holds it on a GPU and dequantizes it there, a block of rows at a time.

pub use lora_formats::nf4;
pub mod nf4_device;
