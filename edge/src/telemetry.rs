//! Logs and metrics set-up shared by the binaries.
//!
//! Logs go through `tracing` (human-readable by default, JSON on request, level from
//! `RUST_LOG`). Metrics use the `metrics` facade and are served for Prometheus at `/metrics`.

use std::net::SocketAddr;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Installs the global tracing subscriber (once; later calls are ignored).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Serves Prometheus metrics on `addr` (path `/metrics`) and returns the bound address.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    // Bind first so port 0 can be resolved and a taken port fails here, clearly.
    let probe = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("metrics listen address {addr}: {e}"))?;
    let bound = probe.local_addr()?;
    drop(probe);
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(bound)
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ])
        .map_err(|e| anyhow::anyhow!("metrics buckets: {e}"))?
        .install()
        .map_err(|e| anyhow::anyhow!("metrics exporter on {bound}: {e}"))?;
    Ok(bound)
}

/// A flag that SIGINT or SIGTERM sets: every binary's loop checks it to stop cleanly.
pub fn stop_on_signals() -> std::io::Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}
