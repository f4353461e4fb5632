//! Integration tests of lora-train (one binary).

mod common;
mod recipe_errors;
mod replay;
mod training;
