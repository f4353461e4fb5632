//! Integration tests of lora-train (one binary).

mod common;
mod data;
mod distributed;
mod dpo;
mod kto;
mod pissa;
mod recipe_errors;
mod replay;
mod scale;
mod thinking;
mod training;
mod trl_replay;
