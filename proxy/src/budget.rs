//! Stage 7 of a request's walk: per-app budgets.
//!
//! Two halves:
//! - [`Limits`]: what each app may spend (from `policies/data/budgets.yaml`)
//!   and the price table (`policies/data/prices.yaml`). Immutable; part of the
//!   state a reload builds and swaps.
//! - [`Budgets`]: the ledger, one per process, never rebuilt: what each app
//!   has spent. A reload swaps the limits and keeps the counters, so a new
//!   limit applies to the current window.
//!
//! Per request: [`Budgets::admit`] before anything reaches the gateway
//! reserves the prompt tokens plus the completion allowance and returns a
//! [`Ticket`] or a [`Rejection`]; when the response ends
//! [`Ticket::reconcile`] replaces the reservation with the real usage.
//! Dropping a ticket unreconciled (cancel, upstream failure) gives back the
//! tokens and cost it reserved and the concurrency slot; the request still
//! counts against requests per minute.
//!
//! Windows are sliding: the minute in 60 one-second slots, the day (a
//! rolling 24 h) in 144 ten-minute slots. Usage in any window never exceeds
//! the hard limit (reservations are charged up front), and `Retry-After` is
//! the time until enough old slots expire for this request to fit.
//!
//! Cost: one dashmap lookup and one short per-app mutex section per admit
//! and per reconcile; no allocation beyond the first request of an app.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::usage::Usage;

/// Errors from loading the budget and price data.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// A data file could not be read.
    #[error("budget data: cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data file does not parse or fails validation; every problem is listed.
    #[error("budget data invalid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The `budgets:` section of the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Completion tokens reserved when a request sets no `max_tokens`/`max_completion_tokens`.
    #[serde(default = "default_max_tokens")]
    pub default_max_tokens: u64,
    /// Budgets file; default `<policy.dir>/data/budgets.yaml`.
    #[serde(default)]
    pub data_file: Option<PathBuf>,
    /// Price table; default `<policy.dir>/data/prices.yaml`.
    #[serde(default)]
    pub prices_file: Option<PathBuf>,
}

fn default_max_tokens() -> u64 {
    4096
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            default_max_tokens: default_max_tokens(),
            data_file: None,
            prices_file: None,
        }
    }
}

impl BudgetConfig {
    /// Every problem with this section, each naming the key and the bad value.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.default_max_tokens == 0 || self.default_max_tokens > 10_000_000 {
            errors.push(format!(
                "budgets.default_max_tokens: {} is out of range (1..=10000000)",
                self.default_max_tokens
            ));
        }
        for (key, path) in [
            ("data_file", &self.data_file),
            ("prices_file", &self.prices_file),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    errors.push(format!("budgets.{key}: {p:?} is not a readable file"));
                }
            }
        }
        errors
    }

    /// The budgets and prices files in force for a policy directory.
    pub fn files(&self, policy_dir: &Path) -> (PathBuf, PathBuf) {
        (
            self.data_file
                .clone()
                .unwrap_or_else(|| policy_dir.join("data").join("budgets.yaml")),
            self.prices_file
                .clone()
                .unwrap_or_else(|| policy_dir.join("data").join("prices.yaml")),
        )
    }
}

/// One budget dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetKind {
    /// Requests per sliding minute.
    RequestsPerMinute,
    /// Prompt + completion tokens per sliding minute.
    TokensPerMinute,
    /// Prompt + completion tokens per rolling 24 h.
    TokensPerDay,
    /// Requests in flight.
    Concurrent,
    /// USD per rolling 24 h, from the price table.
    CostPerDayUsd,
}

impl BudgetKind {
    /// Every kind, in a stable order.
    pub const ALL: [BudgetKind; 5] = [
        Self::RequestsPerMinute,
        Self::TokensPerMinute,
        Self::TokensPerDay,
        Self::Concurrent,
        Self::CostPerDayUsd,
    ];

    /// The name used in data files, metric labels and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequestsPerMinute => "requests_per_minute",
            Self::TokensPerMinute => "tokens_per_minute",
            Self::TokensPerDay => "tokens_per_day",
            Self::Concurrent => "concurrent",
            Self::CostPerDayUsd => "cost_per_day_usd",
        }
    }

    /// Window length in seconds (`None` for concurrency).
    pub fn window_secs(self) -> Option<u64> {
        match self {
            Self::RequestsPerMinute | Self::TokensPerMinute => Some(60),
            Self::TokensPerDay | Self::CostPerDayUsd => Some(86_400),
            Self::Concurrent => None,
        }
    }
}

impl std::fmt::Display for BudgetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hard limit and an optional soft one (allowed, but flagged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Above this the request is rejected with 429.
    pub hard: f64,
    /// Above this the request passes and is flagged.
    #[serde(default)]
    pub soft: Option<f64>,
}

/// One app's limits; any subset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    /// Requests per minute.
    #[serde(default)]
    pub requests_per_minute: Option<Limit>,
    /// Tokens per minute.
    #[serde(default)]
    pub tokens_per_minute: Option<Limit>,
    /// Tokens per day.
    #[serde(default)]
    pub tokens_per_day: Option<Limit>,
    /// Concurrent requests.
    #[serde(default)]
    pub concurrent: Option<Limit>,
    /// USD per day.
    #[serde(default)]
    pub cost_per_day_usd: Option<Limit>,
}

impl AppLimits {
    /// The limit for one kind, if set.
    pub fn get(&self, kind: BudgetKind) -> Option<Limit> {
        match kind {
            BudgetKind::RequestsPerMinute => self.requests_per_minute,
            BudgetKind::TokensPerMinute => self.tokens_per_minute,
            BudgetKind::TokensPerDay => self.tokens_per_day,
            BudgetKind::Concurrent => self.concurrent,
            BudgetKind::CostPerDayUsd => self.cost_per_day_usd,
        }
    }
}

/// `budgets.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsFile {
    /// Limits for apps without their own entry; none = unlimited.
    #[serde(default)]
    pub default: Option<AppLimits>,
    /// Per-app limits.
    #[serde(default)]
    pub apps: BTreeMap<String, AppLimits>,
}

/// Price of one model in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Prompt (input) tokens.
    pub input: f64,
    /// Completion (output) tokens.
    pub output: f64,
}

impl Price {
    /// USD for a number of prompt and completion tokens.
    pub fn cost(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.input + completion as f64 * self.output) / 1_000_000.0
    }
}

/// `prices.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesFile {
    /// Price of models not listed.
    pub default: Price,
    /// Per model; a dated variant (`gpt-4o-mini-2024-07-18`) matches its longest listed prefix.
    #[serde(default)]
    pub models: BTreeMap<String, Price>,
}

/// Limits and prices in force: immutable, built by a reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Limits {
    budgets: BudgetsFile,
    prices: PricesFile,
    default_max_tokens: u64,
}

impl Limits {
    /// From already-parsed data documents (e.g. the policy bundle's
    /// `data.budgets` and `data.prices`); paths only name files in errors.
    /// Collects every problem before failing.
    pub fn from_values(
        budgets: &serde_json::Value,
        budgets_path: &Path,
        prices: &serde_json::Value,
        prices_path: &Path,
        cfg: &BudgetConfig,
    ) -> Result<Self, BudgetError> {
        let mut errors = Vec::new();
        let bfile = budgets_path.display().to_string();
        let pfile = prices_path.display().to_string();
        let b = parse_budgets(budgets, &bfile, &mut errors);
        let p = parse_prices(prices, &pfile, &mut errors);
        if let Some(b) = &b {
            errors.extend(validate_budgets(b, budgets_path));
        }
        if let Some(p) = &p {
            errors.extend(validate_prices(p, prices_path));
        }
        match (b, p) {
            (Some(budgets), Some(prices)) if errors.is_empty() => Ok(Self {
                budgets,
                prices,
                default_max_tokens: cfg.default_max_tokens,
            }),
            _ => Err(BudgetError::Invalid(errors)),
        }
    }

    /// Read and validate the two YAML (or JSON) files.
    pub fn load(
        budgets_path: &Path,
        prices_path: &Path,
        cfg: &BudgetConfig,
    ) -> Result<Self, BudgetError> {
        let read = |path: &Path| -> Result<serde_json::Value, BudgetError> {
            let text = std::fs::read_to_string(path).map_err(|source| BudgetError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            serde_yaml::from_str(&text)
                .map_err(|e| BudgetError::Invalid(vec![format!("{}: {e}", path.display())]))
        };
        let b = read(budgets_path);
        let p = read(prices_path);
        match (b, p) {
            (Ok(b), Ok(p)) => Self::from_values(&b, budgets_path, &p, prices_path, cfg),
            (Err(BudgetError::Invalid(mut e1)), Err(BudgetError::Invalid(e2))) => {
                e1.extend(e2);
                Err(BudgetError::Invalid(e1))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    /// No limits at all, one default price (tests, or a deployment without budgets).
    pub fn unlimited(default_price: Price) -> Self {
        Self {
            budgets: BudgetsFile::default(),
            prices: PricesFile {
                default: default_price,
                models: BTreeMap::new(),
            },
            default_max_tokens: default_max_tokens(),
        }
    }

    /// The limits of one app (its entry, else the default, else none).
    pub fn for_app(&self, app: &str) -> Option<&AppLimits> {
        self.budgets.apps.get(app).or(self.budgets.default.as_ref())
    }

    /// Price of a model: exact entry, else the longest listed prefix, else the default.
    pub fn price(&self, model: &str) -> Price {
        if let Some(p) = self.prices.models.get(model) {
            return *p;
        }
        self.prices
            .models
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map_or(self.prices.default, |(_, p)| *p)
    }

    /// Completion tokens reserved when the request names no maximum.
    pub fn default_max_tokens(&self) -> u64 {
        self.default_max_tokens
    }
}

/// Deserialize one entry, recording the error (with its key path) instead of stopping.
fn entry<T: serde::de::DeserializeOwned>(
    v: &serde_json::Value,
    ctx: &str,
    errors: &mut Vec<String>,
) -> Option<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| errors.push(format!("{ctx}: {e}")))
        .ok()
}

/// A `name → entry` mapping parsed entry by entry, so every bad entry is reported.
fn entries<T: serde::de::DeserializeOwned>(
    v: Option<&serde_json::Value>,
    ctx: &str,
    errors: &mut Vec<String>,
) -> BTreeMap<String, T> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(m)) => {
            for (name, e) in m {
                if let Some(x) = entry(e, &format!("{ctx}.{name}"), errors) {
                    out.insert(name.clone(), x);
                }
            }
        }
        Some(other) => errors.push(format!("{ctx} must be a mapping, got {other}")),
    }
    out
}

fn top_keys(v: &serde_json::Value, file: &str, allowed: &[&str], errors: &mut Vec<String>) -> bool {
    let Some(obj) = v.as_object() else {
        errors.push(format!("{file}: top level must be a mapping"));
        return false;
    };
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            errors.push(format!(
                "{file}: unknown key {k:?} (expected one of: {})",
                allowed.join(", ")
            ));
        }
    }
    true
}

fn parse_budgets(
    v: &serde_json::Value,
    file: &str,
    errors: &mut Vec<String>,
) -> Option<BudgetsFile> {
    let before = errors.len();
    if !top_keys(v, file, &["default", "apps"], errors) {
        return None;
    }
    let default = match v.get("default") {
        None | Some(serde_json::Value::Null) => None,
        Some(d) => entry(d, &format!("{file}: default"), errors),
    };
    let apps = entries(v.get("apps"), &format!("{file}: apps"), errors);
    (errors.len() == before).then_some(BudgetsFile { default, apps })
}

fn parse_prices(v: &serde_json::Value, file: &str, errors: &mut Vec<String>) -> Option<PricesFile> {
    let before = errors.len();
    if !top_keys(v, file, &["default", "models"], errors) {
        return None;
    }
    let default = match v.get("default") {
        Some(d) => entry(d, &format!("{file}: default"), errors),
        None => {
            errors.push(format!(
                "{file}: default is missing (the price of models not listed)"
            ));
            None
        }
    };
    let models = entries(v.get("models"), &format!("{file}: models"), errors);
    match default {
        Some(default) if errors.len() == before => Some(PricesFile { default, models }),
        _ => None,
    }
}

fn check_limit(errors: &mut Vec<String>, file: &str, key: &str, l: &Limit) {
    if !l.hard.is_finite() || l.hard < 0.0 {
        errors.push(format!(
            "{file}: {key}.hard is {} (must be a number >= 0)",
            l.hard
        ));
    }
    if let Some(s) = l.soft {
        if !s.is_finite() || s < 0.0 {
            errors.push(format!("{file}: {key}.soft is {s} (must be a number >= 0)"));
        } else if s > l.hard {
            errors.push(format!(
                "{file}: {key}.soft ({s}) is above hard ({})",
                l.hard
            ));
        }
    }
}

fn validate_app(errors: &mut Vec<String>, file: &str, prefix: &str, a: &AppLimits) {
    for kind in BudgetKind::ALL {
        if let Some(l) = a.get(kind) {
            let key = format!("{prefix}.{}", kind.as_str());
            check_limit(errors, file, &key, &l);
            let integral = kind != BudgetKind::CostPerDayUsd;
            if integral && l.hard.fract() != 0.0 {
                errors.push(format!(
                    "{file}: {key}.hard is {} (must be a whole number)",
                    l.hard
                ));
            }
        }
    }
}

fn validate_budgets(b: &BudgetsFile, path: &Path) -> Vec<String> {
    let file = path.display().to_string();
    let mut errors = Vec::new();
    if let Some(d) = &b.default {
        validate_app(&mut errors, &file, "default", d);
    }
    for (app, a) in &b.apps {
        if app.is_empty() {
            errors.push(format!("{file}: apps has an empty app name"));
        }
        validate_app(&mut errors, &file, &format!("apps.{app}"), a);
    }
    errors
}

fn validate_prices(p: &PricesFile, path: &Path) -> Vec<String> {
    let file = path.display().to_string();
    let mut errors = Vec::new();
    let mut check = |key: String, price: &Price| {
        for (side, v) in [("input", price.input), ("output", price.output)] {
            if !v.is_finite() || v < 0.0 {
                errors.push(format!(
                    "{file}: {key}.{side} is {v} (must be a number >= 0)"
                ));
            }
        }
    };
    check("default".to_string(), &p.default);
    for (model, price) in &p.models {
        check(format!("models.{model}"), price);
    }
    errors
}

/// What one request asks to reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Prompt tokens (counted or estimated; see `tokens`).
    pub prompt_tokens: u64,
    /// `max_tokens` / `max_completion_tokens` from the request, if any.
    pub max_output_tokens: Option<u64>,
    /// The requested model, for the price.
    pub model: String,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// The budget that did not fit (the one that frees up last).
    pub budget: BudgetKind,
    /// Time until this request would fit; zero when it never fits.
    pub retry_after: Duration,
    /// The request is larger than the whole budget: retrying cannot help.
    pub never_fits: bool,
    /// The hard limit.
    pub limit: f64,
    /// What is left in the window now.
    pub remaining: f64,
    /// What this request needed of that budget.
    pub requested: f64,
}

/// Remaining budget of one app, per configured kind (after this request,
/// when taken from a ticket).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Remaining {
    /// Hard limit minus usage (never below 0), per configured budget.
    pub remaining: BTreeMap<BudgetKind, f64>,
    /// Budgets whose soft limit is exceeded.
    pub soft_exceeded: Vec<BudgetKind>,
}

/// What a request was finally charged.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Charge {
    /// Prompt tokens charged.
    pub prompt_tokens: u64,
    /// Completion tokens charged.
    pub completion_tokens: u64,
    /// USD charged.
    pub cost_usd: f64,
}

const MINUTE_SLOTS: usize = 60;
const DAY_SLOTS: usize = 144;

/// A sliding window of `n` slots; slot `i` covers `[i*width, (i+1)*width)` and
/// counts while the current slot index is below `i + n`.
#[derive(Debug)]
struct Window {
    width_ns: u64,
    slots: Vec<(u64, f64)>,
}

impl Window {
    fn new(window: Duration, n: usize) -> Self {
        let width_ns = (window.as_nanos() / n as u128).max(1) as u64;
        Self {
            width_ns,
            slots: vec![(u64::MAX, 0.0); n],
        }
    }

    fn live(&self, slot: u64, cur: u64) -> bool {
        slot != u64::MAX && slot <= cur && slot + self.slots.len() as u64 > cur
    }

    fn used(&self, now_ns: u64) -> f64 {
        let cur = now_ns / self.width_ns;
        self.slots
            .iter()
            .filter(|(i, _)| self.live(*i, cur))
            .map(|(_, a)| *a)
            .sum()
    }

    /// Charge `amount` now; returns the slot charged, for a later adjustment.
    fn add(&mut self, now_ns: u64, amount: f64) -> u64 {
        let cur = now_ns / self.width_ns;
        let n = self.slots.len();
        let slot = &mut self.slots[(cur % n as u64) as usize];
        if slot.0 != cur {
            *slot = (cur, 0.0);
        }
        slot.1 += amount;
        cur
    }

    /// Replace part of an earlier charge: refunds go back to the slot they
    /// were charged in (if still in the window), extra charges land now.
    fn adjust(&mut self, slot: u64, delta: f64, now_ns: u64) {
        let cur = now_ns / self.width_ns;
        let n = self.slots.len();
        if delta < 0.0 {
            let live = self.live(slot, cur);
            let s = &mut self.slots[(slot % n as u64) as usize];
            if s.0 == slot && live {
                s.1 = (s.1 + delta).max(0.0);
            }
        } else if delta > 0.0 {
            self.add(now_ns, delta);
        }
    }

    /// Time until `used - expired + amount <= hard`, given `used + amount > hard`.
    fn time_until_fits(&self, now_ns: u64, amount: f64, hard: f64) -> Option<Duration> {
        let cur = now_ns / self.width_ns;
        let mut live: Vec<(u64, f64)> = self
            .slots
            .iter()
            .copied()
            .filter(|(i, a)| self.live(*i, cur) && *a > 0.0)
            .collect();
        live.sort_by_key(|(i, _)| *i);
        let mut left: f64 = live.iter().map(|(_, a)| *a).sum();
        for (i, a) in live {
            left -= a;
            if left + amount <= hard + EPS {
                let expires_ns = (i + self.slots.len() as u64).saturating_mul(self.width_ns);
                return Some(Duration::from_nanos(expires_ns.saturating_sub(now_ns)));
            }
        }
        None
    }
}

/// Float slack for sums of token counts and prices.
const EPS: f64 = 1e-9;

#[derive(Debug)]
struct AppLedger {
    rpm: Window,
    tpm: Window,
    tpd: Window,
    cost: Window,
    in_flight: u64,
}

impl AppLedger {
    fn new() -> Self {
        Self {
            rpm: Window::new(Duration::from_secs(60), MINUTE_SLOTS),
            tpm: Window::new(Duration::from_secs(60), MINUTE_SLOTS),
            tpd: Window::new(Duration::from_secs(86_400), DAY_SLOTS),
            cost: Window::new(Duration::from_secs(86_400), DAY_SLOTS),
            in_flight: 0,
        }
    }

    fn used(&self, kind: BudgetKind, now_ns: u64) -> f64 {
        match kind {
            BudgetKind::RequestsPerMinute => self.rpm.used(now_ns),
            BudgetKind::TokensPerMinute => self.tpm.used(now_ns),
            BudgetKind::TokensPerDay => self.tpd.used(now_ns),
            BudgetKind::CostPerDayUsd => self.cost.used(now_ns),
            BudgetKind::Concurrent => self.in_flight as f64,
        }
    }

    fn window(&self, kind: BudgetKind) -> Option<&Window> {
        match kind {
            BudgetKind::RequestsPerMinute => Some(&self.rpm),
            BudgetKind::TokensPerMinute => Some(&self.tpm),
            BudgetKind::TokensPerDay => Some(&self.tpd),
            BudgetKind::CostPerDayUsd => Some(&self.cost),
            BudgetKind::Concurrent => None,
        }
    }

    fn remaining(&self, limits: Option<&AppLimits>, now_ns: u64) -> Remaining {
        let mut out = Remaining::default();
        let Some(limits) = limits else {
            return out;
        };
        for kind in BudgetKind::ALL {
            if let Some(l) = limits.get(kind) {
                let used = self.used(kind, now_ns);
                out.remaining.insert(kind, (l.hard - used).max(0.0));
                if l.soft.is_some_and(|s| used > s + EPS) {
                    out.soft_exceeded.push(kind);
                }
            }
        }
        out
    }
}

/// Retry-After when only the concurrency limit is in the way: it frees when
/// some in-flight request ends, which the ledger cannot predict.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// The per-process budget ledger. Share it (`Arc`) across workers; it
/// outlives reloads.
#[derive(Debug)]
pub struct Budgets {
    epoch: Instant,
    apps: DashMap<String, Arc<Mutex<AppLedger>>>,
}

impl Default for Budgets {
    fn default() -> Self {
        Self::new()
    }
}

fn lock(m: &Mutex<AppLedger>) -> MutexGuard<'_, AppLedger> {
    // A panic while holding the lock leaves plain counters: still usable.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Budgets {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::with_epoch(Instant::now())
    }

    /// An empty ledger whose time starts at `epoch` (tests drive `now` from it).
    pub fn with_epoch(epoch: Instant) -> Self {
        Self {
            epoch,
            apps: DashMap::new(),
        }
    }

    fn ns(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn ledger(&self, app: &str) -> Arc<Mutex<AppLedger>> {
        if let Some(l) = self.apps.get(app) {
            return l.clone();
        }
        self.apps
            .entry(app.to_string())
            .or_insert_with(|| Arc::new(Mutex::new(AppLedger::new())))
            .clone()
    }

    /// Request path, before the request is forwarded: check every configured
    /// budget of `app` and, if all fit, charge the reservation (1 request,
    /// prompt + completion allowance tokens, their cost, a concurrency slot).
    /// Usage is tracked even for budgets without a limit, so a limit added
    /// by a reload applies to the current window.
    pub fn admit(
        &self,
        limits: &Limits,
        app: &str,
        res: &Reservation,
        now: Instant,
    ) -> Result<Ticket, Rejection> {
        let max_out = res.max_output_tokens.unwrap_or(limits.default_max_tokens);
        let tokens = res.prompt_tokens.saturating_add(max_out);
        let price = limits.price(&res.model);
        let cost = price.cost(res.prompt_tokens, max_out);
        let now_ns = self.ns(now);
        let ledger = self.ledger(app);
        let app_limits = limits.for_app(app);
        let mut l = lock(&ledger);

        if let Some(al) = app_limits {
            let mut worst: Option<Rejection> = None;
            for kind in BudgetKind::ALL {
                let Some(limit) = al.get(kind) else { continue };
                let amount = match kind {
                    BudgetKind::RequestsPerMinute | BudgetKind::Concurrent => 1.0,
                    BudgetKind::TokensPerMinute | BudgetKind::TokensPerDay => tokens as f64,
                    BudgetKind::CostPerDayUsd => cost,
                };
                let used = l.used(kind, now_ns);
                if used + amount <= limit.hard + EPS {
                    continue;
                }
                let never_fits = amount > limit.hard + EPS;
                let retry_after = if never_fits {
                    Duration::ZERO
                } else {
                    match l.window(kind) {
                        Some(w) => w
                            .time_until_fits(now_ns, amount, limit.hard)
                            .unwrap_or(Duration::from_secs(kind.window_secs().unwrap_or(1))),
                        None => CONCURRENCY_RETRY,
                    }
                };
                let r = Rejection {
                    budget: kind,
                    retry_after,
                    never_fits,
                    limit: limit.hard,
                    remaining: (limit.hard - used).max(0.0),
                    requested: amount,
                };
                // Report what decides the outcome: a never-fit first, else the longest wait.
                let replace = match &worst {
                    None => true,
                    Some(w) => {
                        (r.never_fits && !w.never_fits)
                            || (r.never_fits == w.never_fits && r.retry_after > w.retry_after)
                    }
                };
                if replace {
                    worst = Some(r);
                }
            }
            if let Some(r) = worst {
                return Err(r);
            }
        }

        l.rpm.add(now_ns, 1.0);
        let tpm_slot = l.tpm.add(now_ns, tokens as f64);
        let tpd_slot = l.tpd.add(now_ns, tokens as f64);
        let cost_slot = l.cost.add(now_ns, cost);
        l.in_flight += 1;
        let remaining = l.remaining(app_limits, now_ns);
        drop(l);
        Ok(Ticket {
            ledger,
            epoch: self.epoch,
            price,
            tokens,
            cost,
            prompt_tokens: res.prompt_tokens,
            max_output_tokens: max_out,
            slots: (tpm_slot, tpd_slot, cost_slot),
            remaining,
            open: true,
        })
    }

    /// Snapshot of an app's remaining budgets (admin plane, metrics gauges).
    pub fn remaining(&self, limits: &Limits, app: &str, now: Instant) -> Remaining {
        let now_ns = self.ns(now);
        match self.apps.get(app) {
            Some(l) => lock(&l).remaining(limits.for_app(app), now_ns),
            None => AppLedger::new().remaining(limits.for_app(app), now_ns),
        }
    }

    /// Apps the ledger has seen (for the `airlock_budget_remaining` gauges).
    pub fn apps(&self) -> Vec<String> {
        self.apps.iter().map(|e| e.key().clone()).collect()
    }
}

/// An admitted request's reservation. Call [`Ticket::reconcile`] when the
/// response ends — with the gateway's usage, or for a stream cut short with
/// `SseUsage::partial_usage`, so an app cannot dodge the charge by hanging up
/// before the last chunk. Dropping it instead (the request failed before the
/// gateway saw it) releases the tokens, cost and concurrency slot it held;
/// the request itself stays counted.
#[derive(Debug)]
pub struct Ticket {
    ledger: Arc<Mutex<AppLedger>>,
    epoch: Instant,
    price: Price,
    tokens: u64,
    cost: f64,
    prompt_tokens: u64,
    max_output_tokens: u64,
    slots: (u64, u64, u64),
    remaining: Remaining,
    open: bool,
}

impl Ticket {
    /// Remaining budgets right after this admission, and soft-limit flags
    /// (for the policy input, the decision record and a response header).
    pub fn remaining(&self) -> &Remaining {
        &self.remaining
    }

    /// What was reserved: (prompt tokens, completion allowance, USD).
    pub fn reserved(&self) -> (u64, u64, f64) {
        (self.prompt_tokens, self.max_output_tokens, self.cost)
    }

    /// The reservation as a charge, for a decision record when no usage came back.
    pub fn estimate(&self) -> Charge {
        Charge {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.max_output_tokens,
            cost_usd: self.cost,
        }
    }

    fn settle(&mut self, tokens: u64, cost: f64, now: Instant) {
        if !self.open {
            return;
        }
        self.open = false;
        let now_ns =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let dt = tokens as f64 - self.tokens as f64;
        let dc = cost - self.cost;
        let mut l = lock(&self.ledger);
        l.tpm.adjust(self.slots.0, dt, now_ns);
        l.tpd.adjust(self.slots.1, dt, now_ns);
        l.cost.adjust(self.slots.2, dc, now_ns);
        l.in_flight = l.in_flight.saturating_sub(1);
    }

    /// Response end: replace the reservation with the real usage (from
    /// `usage`). Returns what was charged. Usage above the reservation (an
    /// under-estimated prompt) is charged too.
    pub fn reconcile(mut self, usage: Usage, now: Instant) -> Charge {
        let cost = self
            .price
            .cost(usage.prompt_tokens, usage.completion_tokens);
        self.settle(usage.total(), cost, now);
        Charge {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_usd: cost,
        }
    }

    /// Release everything reserved (request failed before the gateway
    /// used anything). Same as dropping, with an explicit time.
    pub fn release(mut self, now: Instant) {
        self.settle(0, 0.0, now);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settle(0, 0.0, Instant::now());
    }
}

/// Provider error shape for a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error":{"message","type":"rate_limit_exceeded","param","code"}}`
    OpenAi,
    /// `{"type":"error","error":{"type":"rate_limit_error","message"}}`
    Anthropic,
}

/// An HTTP response as plain data, for the proxy to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// Body bytes (JSON).
    pub body: Vec<u8>,
}

fn fmt_amount(kind: BudgetKind, v: f64) -> String {
    if kind == BudgetKind::CostPerDayUsd {
        format!("{v:.4}")
    } else {
        format!("{}", v.max(0.0).floor() as u64)
    }
}

/// `RateLimit-Policy` value (IETF httpapi draft syntax) for the budget of a rejection:
/// `"tokens_per_minute";q=60000;w=60`.
pub fn ratelimit_policy_header(r: &Rejection) -> String {
    let mut s = format!("\"{}\";q={}", r.budget, fmt_amount(r.budget, r.limit));
    if let Some(w) = r.budget.window_secs() {
        s.push_str(&format!(";w={w}"));
    }
    s
}

/// `RateLimit` value: remaining quota and seconds until the request fits:
/// `"tokens_per_minute";r=120;t=17`.
pub fn ratelimit_header(r: &Rejection) -> String {
    format!(
        "\"{}\";r={};t={}",
        r.budget,
        fmt_amount(r.budget, r.remaining),
        retry_secs(r)
    )
}

/// Whole seconds to wait, rounded up, at least 1.
pub fn retry_secs(r: &Rejection) -> u64 {
    let ns = r.retry_after.as_nanos();
    (ns.div_ceil(1_000_000_000) as u64).max(1)
}

/// The 429 for a rejection, in the provider's shape. A request that can
/// never fit gets no `Retry-After` and `x-should-retry: false` (which the
/// official OpenAI and Anthropic SDKs honour), and a body that says so.
pub fn rejection_reply(shape: ErrorShape, app: &str, r: &Rejection) -> HttpReply {
    let message = if r.never_fits {
        format!(
            "request needs {} of budget {} for app {app:?} but the whole budget is {}: it can never fit; lower max_tokens or the prompt",
            fmt_amount(r.budget, r.requested),
            r.budget,
            fmt_amount(r.budget, r.limit)
        )
    } else {
        format!(
            "budget {} exhausted for app {app:?} (limit {}, remaining {}, this request needs {}); retry after {} s",
            r.budget,
            fmt_amount(r.budget, r.limit),
            fmt_amount(r.budget, r.remaining),
            fmt_amount(r.budget, r.requested),
            retry_secs(r)
        )
    };
    let code = if r.never_fits {
        "budget_never_fits"
    } else {
        "budget_exceeded"
    };
    let body = match shape {
        ErrorShape::OpenAi => serde_json::json!({
            "error": {
                "message": message,
                "type": "rate_limit_exceeded",
                "param": r.budget.as_str(),
                "code": code,
            }
        }),
        ErrorShape::Anthropic => serde_json::json!({
            "type": "error",
            "error": { "type": "rate_limit_error", "message": message }
        }),
    };
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("ratelimit-policy".to_string(), ratelimit_policy_header(r)),
    ];
    if r.never_fits {
        headers.push(("x-should-retry".to_string(), "false".to_string()));
    } else {
        headers.push(("retry-after".to_string(), retry_secs(r).to_string()));
        headers.push(("ratelimit".to_string(), ratelimit_header(r)));
    }
    HttpReply {
        status: 429,
        headers,
        body: body.to_string().into_bytes(),
    }
}

/// Header flagging crossed soft limits on a forwarded response, e.g.
/// `airlock-budget-warning: tokens_per_minute, cost_per_day_usd`.
pub fn soft_limit_header(rem: &Remaining) -> Option<(String, String)> {
    if rem.soft_exceeded.is_empty() {
        return None;
    }
    let v: Vec<&str> = rem.soft_exceeded.iter().map(|k| k.as_str()).collect();
    Some(("airlock-budget-warning".to_string(), v.join(", ")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use crate::usage::{self, Dialect, SseUsage};

    fn limits(yaml: &str) -> Limits {
        let b: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
        let p = serde_json::json!({"default": {"input": 1.0, "output": 2.0},
            "models": {"gpt-4o": {"input": 2.5, "output": 10.0}, "gpt-4o-mini": {"input": 0.15, "output": 0.6}}});
        Limits::from_values(
            &b,
            Path::new("budgets.yaml"),
            &p,
            Path::new("prices.yaml"),
            &BudgetConfig::default(),
        )
        .unwrap()
    }

    fn res(prompt: u64, max_out: u64) -> Reservation {
        Reservation {
            prompt_tokens: prompt,
            max_output_tokens: Some(max_out),
            model: "gpt-4o".into(),
        }
    }

    #[test]
    fn requests_per_minute_exhausted_with_computed_retry_after() {
        let lim = limits("apps: { a: { requests_per_minute: { hard: 3 } } }");
        let t0 = Instant::now();
        let b = Budgets::with_epoch(t0);
        // Requests at t=0.5s, 10.5s, 20.5s; the 4th at 30.2s must wait for the first to expire (t=60s).
        for s in [0.5, 10.5, 20.5] {
            let t = b
                .admit(&lim, "a", &res(1, 1), t0 + Duration::from_secs_f64(s))
                .unwrap();
            t.release(t0 + Duration::from_secs_f64(s));
        }
        let r = b
            .admit(&lim, "a", &res(1, 1), t0 + Duration::from_secs_f64(30.2))
            .unwrap_err();
        assert_eq!(r.budget, BudgetKind::RequestsPerMinute);
        assert!(!r.never_fits);
        assert_eq!(r.retry_after, Duration::from_secs_f64(29.8));
        assert_eq!(retry_secs(&r), 30);
        assert_eq!(r.remaining, 0.0);
        // After the first slot expired it fits again.
        assert!(b
            .admit(&lim, "a", &res(1, 1), t0 + Duration::from_secs(60))
            .is_ok());
        // Other apps unaffected (no default).
        assert!(b.admit(&lim, "other", &res(1, 1), t0).is_ok());
    }

    #[test]
    fn tokens_reserved_then_reconciled_json_and_sse() {
        let lim = limits(
            "apps: { a: { tokens_per_minute: { hard: 1000 }, tokens_per_day: { hard: 5000 } } }",
        );
        let t0 = Instant::now();
        let b = Budgets::with_epoch(t0);
        let t = b.admit(&lim, "a", &res(13, 500), t0).unwrap();
        assert_eq!(
            t.remaining().remaining[&BudgetKind::TokensPerMinute],
            1000.0 - 513.0
        );
        // A second request that would fit only once the first is reconciled.
        assert_eq!(
            b.admit(&lim, "a", &res(13, 500), t0).unwrap_err().budget,
            BudgetKind::TokensPerMinute
        );
        let u = usage::from_json(Dialect::OpenAi, usage::tests::OPENAI_JSON.as_bytes()).unwrap();
        let c = t.reconcile(u, t0 + Duration::from_millis(300));
        assert_eq!((c.prompt_tokens, c.completion_tokens), (13, 7));
        let rem = b.remaining(&lim, "a", t0 + Duration::from_secs(1));
        assert_eq!(rem.remaining[&BudgetKind::TokensPerMinute], 1000.0 - 20.0);
        assert_eq!(rem.remaining[&BudgetKind::TokensPerDay], 5000.0 - 20.0);

        // Streamed: usage read from the SSE final chunk.
        let t = b
            .admit(&lim, "a", &res(21, 400), t0 + Duration::from_secs(2))
            .unwrap();
        let mut sse = SseUsage::new(Dialect::OpenAi, true);
        let mut out = Vec::new();
        for chunk in usage::tests::OPENAI_SSE.as_bytes().chunks(17) {
            sse.feed(chunk, &mut out);
        }
        sse.finish(&mut out);
        t.reconcile(sse.usage().unwrap(), t0 + Duration::from_secs(3));
        let rem = b.remaining(&lim, "a", t0 + Duration::from_secs(3));
        assert_eq!(
            rem.remaining[&BudgetKind::TokensPerMinute],
            1000.0 - 20.0 - 23.0
        );

        // Anthropic stream.
        let t = b
            .admit(&lim, "a", &res(30, 100), t0 + Duration::from_secs(4))
            .unwrap();
        let mut sse = SseUsage::new(Dialect::Anthropic, false);
        sse.feed(usage::tests::ANTHROPIC_SSE.as_bytes(), &mut out);
        t.reconcile(sse.usage().unwrap(), t0 + Duration::from_secs(5));
        let rem = b.remaining(&lim, "a", t0 + Duration::from_secs(5));
        assert_eq!(
            rem.remaining[&BudgetKind::TokensPerDay],
            5000.0 - 20.0 - 23.0 - 45.0
        );
    }

    #[test]
    fn dropped_ticket_releases_reservation() {
        let lim =
            limits("apps: { a: { tokens_per_minute: { hard: 1000 }, concurrent: { hard: 1 } } }");
        let t0 = Instant::now();
        let b = Budgets::with_epoch(t0);
        let t = b.admit(&lim, "a", &res(100, 800), t0).unwrap();
        let r = b.admit(&lim, "a", &res(1, 1), t0).unwrap_err();
        assert_eq!(r.budget, BudgetKind::Concurrent);
        assert_eq!(r.retry_after, CONCURRENCY_RETRY);
        drop(t); // cancelled stream
        let rem = b.remaining(&lim, "a", t0 + Duration::from_millis(10));
        assert_eq!(rem.remaining[&BudgetKind::TokensPerMinute], 1000.0);
        assert_eq!(rem.remaining[&BudgetKind::Concurrent], 1.0);
        assert!(b.admit(&lim, "a", &res(100, 800), t0).is_ok());
    }

    #[test]
    fn concurrent_limit_under_parallel_threads() {
        let lim = Arc::new(limits("apps: { a: { concurrent: { hard: 4 } } }"));
        let b = Arc::new(Budgets::new());
        let admitted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let mut handles = Vec::new();
        for _ in 0..16 {
            let (lim, b, admitted, barrier) =
                (lim.clone(), b.clone(), admitted.clone(), barrier.clone());
            handles.push(std::thread::spawn(move || {
                let r = b.admit(&lim, "a", &res(1, 1), Instant::now());
                barrier.wait(); // every thread has tried while the tickets are held
                if let Ok(t) = r {
                    admitted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(t);
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(admitted.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(
            b.remaining(&lim, "a", Instant::now()).remaining[&BudgetKind::Concurrent],
            4.0
        );
    }

    #[test]
    fn cost_budget_with_price_table() {
        // gpt-4o: $2.5 in / $10 out per 1M. 10k prompt + 10k out = $0.125 reserved.
        let lim = limits("apps: { a: { cost_per_day_usd: { hard: 0.3, soft: 0.2 } } }");
        assert_eq!(lim.price("gpt-4o-2024-08-06"), lim.price("gpt-4o"));
        assert_eq!(lim.price("gpt-4o-mini-2024-07-18").input, 0.15);
        assert_eq!(lim.price("mystery").input, 1.0);
        let t0 = Instant::now();
        let b = Budgets::with_epoch(t0);
        let t1 = b.admit(&lim, "a", &res(10_000, 10_000), t0).unwrap();
        assert!(t1.remaining().soft_exceeded.is_empty());
        let t2 = b.admit(&lim, "a", &res(10_000, 10_000), t0).unwrap();
        assert_eq!(
            t2.remaining().soft_exceeded,
            vec![BudgetKind::CostPerDayUsd]
        );
        let r = b.admit(&lim, "a", &res(10_000, 10_000), t0).unwrap_err();
        assert_eq!(r.budget, BudgetKind::CostPerDayUsd);
        // Day slots are 10 min: the first charge expires after 24 h.
        assert_eq!(r.retry_after, Duration::from_secs(86_400));
        // Real usage is much smaller: reconciling frees room.
        let c = t1.reconcile(
            Usage {
                prompt_tokens: 10_000,
                completion_tokens: 1_000,
            },
            t0,
        );
        assert!((c.cost_usd - 0.035).abs() < 1e-12);
        assert!(b.admit(&lim, "a", &res(10_000, 10_000), t0).is_ok());
        drop(t2);
        // Never fits: bigger than the whole day.
        let r = b.admit(&lim, "a", &res(10_000, 100_000), t0).unwrap_err();
        assert!(r.never_fits);
        let reply = rejection_reply(ErrorShape::Anthropic, "a", &r);
        assert!(reply.headers.iter().all(|(k, _)| k != "retry-after"));
        assert!(reply
            .headers
            .contains(&("x-should-retry".into(), "false".into())));
        assert!(String::from_utf8(reply.body).unwrap().contains("never fit"));
    }

    #[test]
    fn never_fits_tokens_and_reply_shapes() {
        let lim = limits("default: { tokens_per_minute: { hard: 1000 } }");
        let t0 = Instant::now();
        let b = Budgets::with_epoch(t0);
        let r = b.admit(&lim, "x", &res(900, 200), t0).unwrap_err();
        assert!(r.never_fits);
        let _t = b
            .admit(&lim, "x", &res(500, 100), t0 + Duration::from_millis(200))
            .unwrap();
        let r = b
            .admit(&lim, "x", &res(500, 100), t0 + Duration::from_millis(5200))
            .unwrap_err();
        assert_eq!(r.retry_after, Duration::from_millis(54_800));
        let reply = rejection_reply(ErrorShape::OpenAi, "x", &r);
        assert_eq!(reply.status, 429);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        let h = |n: &str| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(h("retry-after").as_deref(), Some("55"));
        assert_eq!(
            h("ratelimit-policy").as_deref(),
            Some("\"tokens_per_minute\";q=1000;w=60")
        );
        assert_eq!(
            h("ratelimit").as_deref(),
            Some("\"tokens_per_minute\";r=400;t=55")
        );
        let reply = rejection_reply(ErrorShape::Anthropic, "x", &r);
        let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }

    #[test]
    fn counters_survive_limit_swap() {
        let t0 = Instant::now();
        let b = Budgets::with_epoch(t0);
        let loose = limits("apps: { a: { requests_per_minute: { hard: 100 } } }");
        let held: Vec<Ticket> = (0..5)
            .map(|_| b.admit(&loose, "a", &res(1, 1), t0).unwrap())
            .collect();
        let tight = limits("apps: { a: { requests_per_minute: { hard: 5 } } }");
        assert!(b.admit(&tight, "a", &res(1, 1), t0).is_err());
        // A limit that did not exist before applies to the usage already tracked.
        // (5 held tickets × 2 tokens = 10 in flight.)
        let tokens = limits("apps: { a: { tokens_per_minute: { hard: 11 } } }");
        assert_eq!(
            b.admit(&tokens, "a", &res(1, 1), t0).unwrap_err().budget,
            BudgetKind::TokensPerMinute
        );
        drop(held);
        assert!(b.admit(&tokens, "a", &res(1, 1), t0).is_ok());
    }

    #[test]
    fn data_validation_collects_every_error() {
        let b = serde_json::json!({"apps": {"a": {"requests_per_minute": {"hard": -1},
            "tokens_per_minute": {"hard": 10, "soft": 20}, "concurrent": {"hard": 1.5}}}});
        let p = serde_json::json!({"default": {"input": -1.0, "output": 1.0}});
        let err = Limits::from_values(
            &b,
            Path::new("b.yaml"),
            &p,
            Path::new("p.yaml"),
            &BudgetConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("b.yaml: apps.a.requests_per_minute.hard is -1"),
            "{err}"
        );
        assert!(
            err.contains("apps.a.tokens_per_minute.soft (20) is above hard (10)"),
            "{err}"
        );
        assert!(err.contains("apps.a.concurrent.hard is 1.5"), "{err}");
        assert!(err.contains("p.yaml: default.input is -1"), "{err}");
        let typo = serde_json::json!({"apps": {"a": {"request_per_minute": {"hard": 1}}}});
        let err = Limits::from_values(
            &typo,
            Path::new("b.yaml"),
            &p,
            Path::new("p.yaml"),
            &BudgetConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `request_per_minute`"), "{err}");
        assert!(err.contains("p.yaml"), "{err}");
        // Every bad entry, not just the first.
        let two = serde_json::json!({"apps": {"a": {"rpm": {"hard": 1}}, "b": {"tpm": {"hard": 1}}}, "extra": 1});
        let err = Limits::from_values(
            &two,
            Path::new("b.yaml"),
            &serde_json::json!({"default": {"input": 1.0, "output": 1.0}}),
            Path::new("p.yaml"),
            &BudgetConfig::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("b.yaml: apps.a: unknown field `rpm`"), "{err}");
        assert!(err.contains("b.yaml: apps.b: unknown field `tpm`"), "{err}");
        assert!(err.contains("b.yaml: unknown key \"extra\""), "{err}");
    }

    #[test]
    fn shipped_data_files_load() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies"));
        let cfg = BudgetConfig::default();
        let (bf, pf) = cfg.files(dir);
        let lim = Limits::load(&bf, &pf, &cfg).unwrap();
        assert!(lim
            .for_app("support-bot")
            .and_then(|a| a.concurrent)
            .is_some());
        assert!(lim.for_app("unknown").is_some()); // default entry
        assert!(cfg.validate().is_empty());
        let bad = BudgetConfig {
            default_max_tokens: 0,
            data_file: Some("/nope.yaml".into()),
            prices_file: None,
        };
        assert_eq!(bad.validate().len(), 2);
    }
}
