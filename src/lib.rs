//! Backroom's user-facing pieces: the admin client, the in-process sandbox that the pilot and the
//! end-to-end tests share, and the pilot itself. The binary in `main.rs` parses flags and calls
//! into here.

pub mod bench_aggregate;
pub mod bench_fl;
pub mod bench_load;
pub mod client;
pub mod config_env;
pub mod evaluate;
pub mod frames;
pub mod metrics_report;
pub mod pilot;
pub mod sandbox;
