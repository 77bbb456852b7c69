//! Talking to coin daemons (litecoind, bitcoind and their kin).
//!
//! The job manager needs two things from a daemon: block templates to build work from
//! (`getblocktemplate`) and a way to publish a block when a share meets the network target
//! (`submitblock`). [`rpc`] is the JSON-RPC transport with failover across several daemons;
//! [`template`] turns a template into Stratum work and a solved header back into a full block.

pub mod rpc;
pub mod template;

pub use rpc::{CallOptions, DaemonPool, RpcAuth, RpcClient, RpcClientConfig, RpcError};
pub use template::{
    assemble_block, build_coinbase, build_job, BlockAssemblyError, BlockTemplate, CoinbaseConfig,
    CoinbaseError, CoinbaseParts, TemplateError, TemplateTransaction,
};
