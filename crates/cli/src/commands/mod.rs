//! One module per subcommand.

pub mod eval;
pub mod generate;
pub mod inspect;
pub mod merge;
