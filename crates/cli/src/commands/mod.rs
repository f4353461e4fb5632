//! One module per subcommand.

pub mod download;
pub mod eval;
pub mod export;
pub mod extract;
pub mod generate;
pub mod inspect;
pub mod launch;
pub mod merge;
pub mod merge_adapters;
pub mod publish;
pub mod quantize;
pub mod train;
pub mod verify;
