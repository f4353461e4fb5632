//! Integration tests of lora-hub against the loopback fake Hub (one test binary for the crate).

mod download;
mod model_card;
mod publish;
mod support;
mod token;
