//! Quarry's core pool: the source of work and the book of record.
//!
//! This library holds everything the `quarry-core` binary does, so that tests and benches can
//! reach it. So far:
//!
//! - [`daemon`]: JSON-RPC to coin daemons with failover, block templates, coinbases and blocks.
//! - [`jobs`]: the job manager, which turns templates into Stratum jobs for the edges and
//!   publishes blocks when a share meets the network target.
//! - [`regtest`]: a two-node litecoind regtest network for tests and demos.
//! - [`gateway`]: the QUIC endpoint remote edges send their shares to, with the shard
//!   [`journal`] (durable, exactly-once), stable extranonce [`leases`] and the [`ledger`].

pub mod cli;
pub mod config;
pub mod daemon;
pub mod gateway;
pub mod jobs;
pub mod journal;
pub mod leases;
pub mod ledger;
pub mod proxy;
pub mod regtest;
pub mod service;
