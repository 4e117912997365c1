//! End-to-end tests: a real coordinator and real store nodes over mTLS on loopback.

mod cli;
mod federation;
mod metrics;
mod refusals;
mod support;
