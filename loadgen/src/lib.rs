//! wgrelay load generator and null relay. See `docs/benchmarks.md`.

pub mod attack;
pub mod io;
pub mod matrix;
pub mod net;
pub mod procinfo;
pub mod run;
pub mod setup;
pub mod timers;
pub mod topo;
pub mod traffic;
