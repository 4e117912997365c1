//! Unit tests of the node's pure parts and its local stores.

mod camera_stream;
mod config;
mod dp;
mod frames;
mod ledger;
mod local_data;
mod release;
mod stores;
mod trainer;
