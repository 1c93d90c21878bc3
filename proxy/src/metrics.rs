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
    budget_rejections: IntCounterVec,
    tokens: IntCounterVec,
    cost: prometheus::CounterVec,
    budget_remaining: prometheus::GaugeVec,
    redactions: IntCounterVec,
    policy_denials: IntCounterVec,
    /// Pod-identity watch metrics (registered even when the watch is off, so dashboards see them).
    pub kube: crate::identity::kube::KubeMetrics,
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
        let budget_rejections = IntCounterVec::new(
            Opts::new(
                "airlock_budget_rejections_total",
                "Requests refused with 429 by budget",
            ),
            &["app", "budget"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "airlock_tokens_total",
                "Tokens by app, model and kind (prompt/completion, from usage or estimate)",
            ),
            &["app", "model", "kind"],
        )?;
        let cost = prometheus::CounterVec::new(
            Opts::new(
                "airlock_cost_usd_total",
                "Cost charged in USD by app and model",
            ),
            &["app", "model"],
        )?;
        let budget_remaining = prometheus::GaugeVec::new(
            Opts::new(
                "airlock_budget_remaining",
                "What is left of each budget after the app's latest request",
            ),
            &["app", "budget"],
        )?;
        let redactions = IntCounterVec::new(
            Opts::new(
                "airlock_redactions_total",
                "Redaction findings by app, type and action",
            ),
            &["app", "type", "action"],
        )?;
        let policy_denials = IntCounterVec::new(
            Opts::new(
                "airlock_policy_denials_total",
                "Policy denials by app and reason (monitor-mode would-be denials have enforced=false)",
            ),
            &["app", "reason", "enforced"],
        )?;
        for c in [&budget_rejections, &tokens, &redactions, &policy_denials] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(budget_remaining.clone()))?;
        let kube = crate::identity::kube::KubeMetrics::register(&registry)
            .map_err(|e| MetricsError(prometheus::Error::Msg(e.to_string())))?;
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
            budget_rejections,
            tokens,
            cost,
            budget_remaining,
            redactions,
            policy_denials,
            kube,
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

    /// Create the zero-valued series dashboards and alerts expect before the first event.
    pub fn init_series(&self, gateways: &[&str]) {
        for g in gateways {
            for k in ["connect", "tls", "timeout", "other"] {
                let _ = self.upstream_errors.with_label_values(&[g, k]);
            }
        }
        let _ = self.log_errors.with_label_values(&["write"]);
        for r in ["ok", "error"] {
            let _ = self.reloads.with_label_values(&[r]);
        }
    }

    /// Count a budget rejection.
    pub fn budget_rejection(&self, app: &str, budget: &str) {
        self.budget_rejections
            .with_label_values(&[app, budget])
            .inc();
    }

    /// Count tokens (`kind`: `prompt` or `completion`; `source`: `usage` or `estimate`).
    pub fn tokens(&self, app: &str, model: &str, kind: &str, n: u64) {
        self.tokens.with_label_values(&[app, model, kind]).inc_by(n);
    }

    /// Count cost.
    pub fn cost(&self, app: &str, model: &str, usd: f64) {
        if usd > 0.0 && usd.is_finite() {
            self.cost.with_label_values(&[app, model]).inc_by(usd);
        }
    }

    /// Publish what is left of a budget.
    pub fn budget_remaining(&self, app: &str, budget: &str, left: f64) {
        self.budget_remaining
            .with_label_values(&[app, budget])
            .set(left);
    }

    /// Count redaction findings.
    pub fn redaction(&self, app: &str, kind: &str, action: &str, n: u64) {
        self.redactions
            .with_label_values(&[app, kind, action])
            .inc_by(n);
    }

    /// Count a policy denial (or a monitor-mode would-be denial).
    pub fn policy_denial(&self, app: &str, reason: &str, enforced: bool) {
        self.policy_denials
            .with_label_values(&[app, reason, if enforced { "true" } else { "false" }])
            .inc();
    }

    /// Render the text exposition format, plus `extra` families rendered by the caller
    /// (kernel counters read at scrape time).
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

/// The eBPF counters in text exposition format, read from the kernel at scrape time.
/// Both families are always present (with no series when nothing is attached), so
/// dashboards and alerts can rely on the names.
pub fn render_kernel_counters(
    counters: &std::collections::BTreeMap<crate::identity::AppId, crate::agent::AppCounters>,
) -> String {
    use std::fmt::Write as _;
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    out.push_str("# HELP airlock_redirects_total TCP connects redirected to the proxy, by app\n");
    out.push_str("# TYPE airlock_redirects_total counter\n");
    for (app, c) in counters {
        let _ = writeln!(
            out,
            "airlock_redirects_total{{app=\"{}\"}} {}",
            esc(&app.0),
            c.redirected
        );
    }
    out.push_str(
        "# HELP airlock_denied_sockets_total Sockets refused inside app cgroups, by app and kind\n",
    );
    out.push_str("# TYPE airlock_denied_sockets_total counter\n");
    for (app, c) in counters {
        for (kind, n) in &c.denied {
            let _ = writeln!(
                out,
                "airlock_denied_sockets_total{{app=\"{}\",kind=\"{}\"}} {}",
                esc(&app.0),
                kind.as_str(),
                n
            );
        }
    }
    out
}
