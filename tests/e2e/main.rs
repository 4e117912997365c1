//! End-to-end tests: a real coordinator and real store nodes over mTLS on loopback.

mod audit;
mod bench_fl;
mod cli;
mod crash;
mod dashboard;
mod deploy;
mod distribution;
mod federation;
mod frame_requests;
mod http2;
mod metrics;
mod people;
mod postgres;
mod privacy;
mod redaction;
mod refusals;
mod replicas;
mod roles;
mod s3;
mod store_privacy;
mod strategies;
mod support;
mod telemetry;
mod wire_scan;
