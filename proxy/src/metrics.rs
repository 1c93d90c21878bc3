//! Prometheus metrics, with typed label sets so call sites cannot misspell a label.
//!
//! Each [`Metrics`] owns its registry (several proxies can live in one test
//! process); `/metrics` renders it together with the process-wide default
//! registry that pingora itself uses.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Labels of `airlock_requests_total`.
pub struct RequestLabels<'a> {
    /// App id.
    pub app: &'a str,
    /// Gateway name, or `none`.
    pub gateway: &'a str,
    /// Decision (`allow`, `deny`, `redact`, `error`).
    pub decision: &'a str,
}

/// All metrics of one Airlock instance.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    upstream: HistogramVec,
    overhead: Histogram,
    upstream_errors: IntCounterVec,
    log_errors: IntCounterVec,
    revision: IntGaugeVec,
    reloads: IntCounterVec,
}

/// Sub-millisecond resolution where the proxy's own cost lives.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];
const UPSTREAM_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A metric could not be registered (a programming error: duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "airlock_requests_total",
                "Requests by app, gateway and decision",
            ),
            &["app", "gateway", "decision"],
        )?;
        let upstream = HistogramVec::new(
            HistogramOpts::new(
                "airlock_upstream_seconds",
                "Time waiting on the gateway: connect to last response byte",
            )
            .buckets(UPSTREAM_BUCKETS.to_vec()),
            &["gateway"],
        )?;
        let overhead = Histogram::with_opts(
            HistogramOpts::new(
                "airlock_overhead_seconds",
                "Time Airlock added to a request: total minus upstream",
            )
            .buckets(OVERHEAD_BUCKETS.to_vec()),
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "airlock_upstream_errors_total",
                "Upstream failures by gateway and kind (connect, tls, timeout, other)",
            ),
            &["gateway", "kind"],
        )?;
        let log_errors = IntCounterVec::new(
            Opts::new(
                "airlock_decision_log_errors_total",
                "Decision records that could not be written",
            ),
            &["kind"],
        )?;
        let revision = IntGaugeVec::new(
            Opts::new(
                "airlock_config_revision_info",
                "Revision of the configuration in force (value 1)",
            ),
            &["revision"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "airlock_config_reloads_total",
                "Configuration reload attempts by result",
            ),
            &["result"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(upstream.clone()))?;
        registry.register(Box::new(overhead.clone()))?;
        registry.register(Box::new(upstream_errors.clone()))?;
        registry.register(Box::new(log_errors.clone()))?;
        registry.register(Box::new(revision.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        Ok(Metrics {
            registry,
            requests,
            upstream,
            overhead,
            upstream_errors,
            log_errors,
            revision,
            reloads,
        })
    }

    /// The registry, for stages that register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Count one finished request.
    pub fn request(&self, l: &RequestLabels<'_>) {
        self.requests
            .with_label_values(&[l.app, l.gateway, l.decision])
            .inc();
    }

    /// Record time spent on the gateway.
    pub fn upstream_time(&self, gateway: &str, secs: f64) {
        self.upstream.with_label_values(&[gateway]).observe(secs);
    }

    /// Record time Airlock added.
    pub fn overhead_time(&self, secs: f64) {
        self.overhead.observe(secs);
    }

    /// Count an upstream failure.
    pub fn upstream_error(&self, gateway: &str, kind: &str) {
        self.upstream_errors
            .with_label_values(&[gateway, kind])
            .inc();
    }

    /// Count a decision record that could not be written.
    pub fn log_error(&self) {
        self.log_errors.with_label_values(&["write"]).inc();
    }

    /// Publish the revision in force (only one series has value 1).
    pub fn set_revision(&self, rev: &str) {
        self.revision.reset();
        self.revision.with_label_values(&[rev]).set(1);
    }

    /// Count a reload attempt (`ok` or `error`).
    pub fn reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// Render the text exposition format.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&families, &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
