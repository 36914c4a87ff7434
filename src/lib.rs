//! wgrelay: a WireGuard relay that forwards by receiver index, never decrypting.
//!
//! Layers, each a folder: `wire` (typed views of the four messages, mac1/mac2, cookie crypto),
//! `admit` (who may start a handshake), `table` (index and identity state), `route` (the pure
//! routing decision), `io` (backends that only move bytes) and `shard` (the datapath loop);
//! `upstream` and `control` keep the proxy and port-per-peer modes' addresses current; `ctl`
//! is the control socket and `wgrelay show`.

pub mod admit;
pub mod config;
/// The command line's clap types (kept at this path for callers; they live in `config::args`).
pub use config::args as cli;
pub mod constants;
pub mod control;
pub mod ctl;
pub mod io;
pub mod key;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod relay;
pub mod route;
pub mod shard;
pub mod table;
pub mod upstream;
pub mod wire;
