//! The loopback fake Hub as a process of its own, for benchmarks that measure `lora publish` and
//! `lora download` apart from the server (the fake keeps what it receives in memory).
//!
//! cargo run --release -p lora-hub --example fake_hub_server -- TOKEN [xet]
//!
//! With `xet`, the fake speaks Xet as the Hub does (a local CAS server takes the uploads).
//!
//! Prints the Hub's URL on the first line of standard output, then serves until standard input
//! closes.

use std::io::{Read, Write};

fn main() {
    let token = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: fake_hub_server TOKEN");
        std::process::exit(2)
    });
    let hub = match std::env::args().nth(2).as_deref() {
        Some("xet") => lora_hub::fake_hub::FakeHub::start_xet(&token),
        _ => lora_hub::fake_hub::FakeHub::start(&token),
    };
    println!("{}", hub.url);
    std::io::stdout().flush().expect("stdout");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
