//! capstan's replication: one openraft group for the whole store.
pub mod types;
pub mod codec;
mod crc;
pub mod log_store;
pub mod state_machine;
pub mod faults;
pub mod network;
pub mod cluster;
pub mod replica;
pub mod lincheck;
