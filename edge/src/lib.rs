//! The Quarry edge: the miner-facing side of the pool.
//!
//! Miners connect with ordinary Stratum V1. The edge answers them locally — subscribe,
//! authorize, difficulty, and a verdict on every share after recomputing its proof of work — and
//! hands accepted shares on for crediting. The same code serves miners connected straight to the
//! core: one validation path, never two.

pub mod batcher;
pub mod cli;
pub mod config;
pub mod edge_config;
pub mod fallback;
pub mod inbox;
pub mod jobs;
pub mod pacer;
pub mod realtime;
pub mod sched_slice;
pub mod server;
pub mod session;
pub mod share;
pub mod slots;
pub mod spool;
pub mod telemetry;
pub mod uplink;
pub mod validator;
pub mod vardiff;
