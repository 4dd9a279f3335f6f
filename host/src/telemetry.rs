//! Logs and metrics.
//!
//! Metrics go through the `metrics` facade and are served in Prometheus
//! text format on `--metrics-listen`. Hot-path handles are registered once
//! in [`RequestMetrics`] so a request does not hash label sets.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

use crate::{Error, Result};

/// Installs the tracing subscriber for a `concord` process. `filter` uses
/// `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
pub fn init_logging(filter: &str) {
    let env = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt().with_env_filter(env).with_target(false).try_init();
}

/// Latency buckets in seconds: 25 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Starts the Prometheus endpoint on `addr` (`GET /metrics`). Only the first
/// call in a process installs the recorder; later calls (several nodes in
/// one test process) report an error the caller may ignore.
pub fn install_prometheus(addr: SocketAddr) -> Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("concord_siblings_per_read".into()),
                &[1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0],
            )
        })
        .map_err(|e| Error::Internal(format!("metrics setup: {e}")))?
        .install()
        .map_err(|e| Error::Internal(format!("cannot serve metrics on {addr}: {e}")))
}

/// Per-operation request metrics, registered once.
#[derive(Clone)]
pub struct OpMetrics {
    latency: Histogram,
    ok: Counter,
    op: &'static str,
}

impl OpMetrics {
    fn new(op: &'static str) -> Self {
        Self {
            latency: histogram!("concord_request_duration_seconds", "op" => op),
            ok: counter!("concord_requests_total", "op" => op, "code" => "ok"),
            op,
        }
    }

    /// Records one finished request.
    pub fn record(&self, elapsed: Duration, code: Option<tonic::Code>) {
        self.latency.record(elapsed.as_secs_f64());
        match code {
            None => self.ok.increment(1),
            Some(code) => counter!("concord_requests_total", "op" => self.op, "code" => code_name(code)).increment(1),
        }
    }
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        InvalidArgument => "invalid_argument",
        Unavailable => "unavailable",
        DeadlineExceeded => "deadline_exceeded",
        FailedPrecondition => "failed_precondition",
        NotFound => "not_found",
        DataLoss => "data_loss",
        Internal => "internal",
        _ => "other",
    }
}

/// Metrics of the client-facing request paths.
#[derive(Clone)]
pub struct RequestMetrics {
    /// `Kv.Get`.
    pub get: OpMetrics,
    /// `Kv.Put`.
    pub put: OpMetrics,
    /// `Kv.Delete`.
    pub delete: OpMetrics,
    /// Siblings returned per read that found something.
    pub siblings_per_read: Histogram,
}

impl RequestMetrics {
    /// Registers the handles.
    pub fn new() -> Self {
        Self {
            get: OpMetrics::new("get"),
            put: OpMetrics::new("put"),
            delete: OpMetrics::new("delete"),
            siblings_per_read: histogram!("concord_siblings_per_read"),
        }
    }
}

impl Default for RequestMetrics {
    fn default() -> Self {
        Self::new()
    }
}
