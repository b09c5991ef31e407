//! `httptp`: the teleport reverse proxy, load balancer and protocol bridge. Run one on each side
//! of a slow link: `clients --HTTP--> httptp ==teleport==> httptp --HTTP--> backends`.
//!
//! The proxy modes arrive with the client and server libraries; today the binary answers
//! `--help` and `--version` and says so.

use clap::Parser;

/// The teleport reverse proxy, load balancer and protocol bridge.
///
/// The proxy modes (-in/-out and friends) and `httptp demo` are not built yet; the listener
/// layer they run on is (see the `echo` example of teleport-transport).
#[derive(Debug, Parser)]
#[command(name = "httptp", version, about, long_about)]
struct Args {}

fn main() {
    let Args {} = Args::parse();
    eprintln!("httptp: no proxy mode is built yet; see `httptp --help`");
    std::process::exit(2);
}
