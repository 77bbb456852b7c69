//! Quarry's load tester.
//!
//! It plays the parts of a pool's outside world so the edge and the core can be measured and
//! checked without a farm: [`miner`] simulates miners that speak Stratum V1 and hash for real,
//! [`stack`] starts the whole local stack (litecoind in regtest, quarry-core) as real processes.
//! The `quarry-loadtest` binary is a thin shell over [`cli`].

pub mod bench_proxy;
pub mod bench_stratum;
pub mod bench_uplink;
pub mod box_cpu;
pub mod cli;
pub mod exactly_once;
pub mod host_speed;
pub mod hostile;
pub mod impair;
pub mod miner;
pub mod process;
pub mod proxy_rig;
pub mod scenario;
pub mod sim_pool;
pub mod stack;
mod stack_cmd;
pub mod stall_watch;
pub mod storm;
pub mod synthetic_core;
pub mod synthetic_pool;
pub mod tcp_impair;
pub mod udp_meter;
