//! Integration tests of lora-train (one binary).

mod common;
mod replay;
