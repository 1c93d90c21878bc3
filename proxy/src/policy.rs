//! Stage 8 of a request's walk: the policy decision.
//!
//! The proxy hands one [`PolicyInput`] per request to the Rego policy loaded
//! from a directory (default `policies/`) and gets back a [`PolicyDecision`]:
//! allow or deny, the reasons, monitor mode and overrides the proxy honours.
//!
//! Loading ([`PolicyBundle::load`]) parses every `*.rego` module (test modules
//! excluded), reads `data/*.yaml|yml|json` into `data.<file stem>`, compiles the
//! entry point to regorus' bytecode VM and evaluates it once so a broken policy
//! fails here, at load or reload time, and never on a request.
//!
//! Evaluation needs `&mut` on the VM. Each worker thread keeps its own VM,
//! built lazily from the bundle it was last asked about ([`PolicyBundle::decide`]);
//! there is no shared lock on the request path.
//!
//! [`run_tests`] is the `airlock policy test DIR` loop: every `test_` rule in
//! the directory's modules, evaluated with the interpreter, pass or fail.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use regorus::rvm::{Program, RegoVM};
use regorus::{CompiledPolicy, Engine, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Entry point evaluated when the config names none.
pub const DEFAULT_ENTRYPOINT: &str = "data.airlock.decision";

/// Errors from loading, compiling or evaluating a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("policy: cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The directory holds no Rego module.
    #[error(
        "policy: no .rego module in {0} (hint: policy.dir must point at the policy directory)"
    )]
    NoModules(PathBuf),
    /// A Rego module does not parse.
    #[error("policy: {path}: {message}")]
    Parse {
        /// The module's path.
        path: PathBuf,
        /// regorus' message, with line and column.
        message: String,
    },
    /// A data file does not parse or is not an object at the top.
    #[error("policy data {path}: {message}")]
    Data {
        /// The data file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Data files failed their typed validation.
    #[error("policy data invalid:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
    /// Compiling the entry point (to the bytecode VM) failed.
    #[error("policy: compiling entry point {entrypoint}: {message}")]
    Compile {
        /// The entry point.
        entrypoint: String,
        /// regorus' message.
        message: String,
    },
    /// Evaluation failed at run time.
    #[error("policy: evaluating {entrypoint}: {message}")]
    Eval {
        /// The entry point.
        entrypoint: String,
        /// regorus' message.
        message: String,
    },
    /// The entry point returned something that is not a decision object.
    #[error("policy: {entrypoint} returned {got}, expected an object with a boolean \"allow\" (hint: the entry point must be the decision document)")]
    BadOutput {
        /// The entry point.
        entrypoint: String,
        /// What came back, shortened.
        got: String,
    },
    /// The policy's own unit tests failed during a reload.
    #[error("policy: {failed} of {total} policy unit tests failed: {names}")]
    TestsFailed {
        /// How many failed.
        failed: usize,
        /// How many ran.
        total: usize,
        /// The failing tests, comma separated.
        names: String,
    },
}

/// The `policy:` section of the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory with the Rego modules and `data/`.
    pub dir: PathBuf,
    /// Rule evaluated per request; must produce the decision object.
    #[serde(default = "default_entrypoint")]
    pub entrypoint: String,
    /// Run the directory's `test_` rules on every (re)load; any failure rejects the reload.
    #[serde(default)]
    pub run_tests_on_reload: bool,
}

fn default_entrypoint() -> String {
    DEFAULT_ENTRYPOINT.to_string()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("policies"),
            entrypoint: default_entrypoint(),
            run_tests_on_reload: false,
        }
    }
}

impl PolicyConfig {
    /// Every problem with this section, each naming the key and the bad value.
    pub fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.dir.as_os_str().is_empty() {
            errors.push("policy.dir: must not be empty".to_string());
        } else if !self.dir.is_dir() {
            errors.push(format!(
                "policy.dir: {:?} is not a directory (hint: mount the policy ConfigMap there)",
                self.dir
            ));
        }
        let ep = &self.entrypoint;
        let well_formed = ep.starts_with("data.")
            && ep.len() > 5
            && ep[5..]
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !well_formed {
            errors.push(format!(
                "policy.entrypoint: {ep:?} is not a rule path like \"data.airlock.decision\""
            ));
        }
        errors
    }
}

/// Content hash of everything a decision depended on (hex SHA-256).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PolicyRevision(pub String);

impl std::fmt::Display for PolicyRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the proxy tells the policy about one request. See `docs/policy-input.md`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PolicyInput {
    /// Who is calling.
    pub app: InputApp,
    /// Where the app meant to go and where the proxy routes it.
    pub destination: InputDestination,
    /// The HTTP request as the proxy parsed it.
    pub request: InputRequest,
    /// Prompt tokens (estimate) and reserved completion tokens.
    pub tokens: InputTokens,
    /// Redaction findings, one entry per type.
    pub findings: Vec<InputFinding>,
    /// Budget state after admission.
    pub budget: InputBudget,
}

/// Object keys of the input document, allocated once per thread: building
/// the input then costs a reference-count bump per key instead of an
/// allocation (a third of the input's cost).
struct InputKeys {
    app: Value,
    id: Value,
    cgroup_id: Value,
    pid: Value,
    destination: Value,
    origin: Value,
    gateway: Value,
    provider: Value,
    request: Value,
    method: Value,
    path: Value,
    model: Value,
    stream: Value,
    tokens: Value,
    prompt: Value,
    source: Value,
    max_output: Value,
    findings: Value,
    kind: Value,
    action: Value,
    count: Value,
    budget: Value,
    remaining: Value,
    soft_exceeded: Value,
}

impl InputKeys {
    fn new() -> Self {
        let k = Value::from;
        Self {
            app: k("app"),
            id: k("id"),
            cgroup_id: k("cgroup_id"),
            pid: k("pid"),
            destination: k("destination"),
            origin: k("origin"),
            gateway: k("gateway"),
            provider: k("provider"),
            request: k("request"),
            method: k("method"),
            path: k("path"),
            model: k("model"),
            stream: k("stream"),
            tokens: k("tokens"),
            prompt: k("prompt"),
            source: k("source"),
            max_output: k("max_output"),
            findings: k("findings"),
            kind: k("type"),
            action: k("action"),
            count: k("count"),
            budget: k("budget"),
            remaining: k("remaining"),
            soft_exceeded: k("soft_exceeded"),
        }
    }
}

thread_local! {
    static INPUT_KEYS: InputKeys = InputKeys::new();
}

fn obj<const N: usize>(pairs: [(&Value, Value); N]) -> Value {
    Value::from(
        pairs
            .into_iter()
            .map(|(k, v)| (k.clone(), v))
            .collect::<BTreeMap<Value, Value>>(),
    )
}

impl PolicyInput {
    /// The input as a Rego value, built directly (about 3× cheaper than a
    /// round trip through `serde_json::Value`). Same shape as its serde form.
    pub fn to_value(&self) -> Value {
        INPUT_KEYS.with(|k| self.to_value_with(k))
    }

    /// Overwrite a document built by [`Self::to_value`] with this input,
    /// reusing its objects and any string that did not change (consecutive
    /// requests on a worker mostly share app, route and model). False when
    /// the document does not have the expected shape; the caller rebuilds.
    fn update_value(&self, doc: &mut Value) -> bool {
        INPUT_KEYS.with(|k| self.update_with(doc, k).is_some())
    }

    fn update_with(&self, doc: &mut Value, k: &InputKeys) -> Option<()> {
        fn field<'a>(obj: &'a mut Value, key: &Value) -> Option<&'a mut Value> {
            obj.as_object_mut().ok()?.get_mut(key)
        }
        fn set_str(slot: &mut Value, s: &str) {
            if !matches!(slot, Value::String(cur) if **cur == *s) {
                *slot = Value::from(s);
            }
        }
        let app = field(doc, &k.app)?;
        set_str(field(app, &k.id)?, &self.app.id);
        *field(app, &k.cgroup_id)? = Value::from(self.app.cgroup_id);
        *field(app, &k.pid)? = self.app.pid.map_or(Value::Null, Value::from);
        let dst = field(doc, &k.destination)?;
        set_str(field(dst, &k.origin)?, &self.destination.origin);
        set_str(field(dst, &k.gateway)?, &self.destination.gateway);
        set_str(field(dst, &k.provider)?, &self.destination.provider);
        let req = field(doc, &k.request)?;
        set_str(field(req, &k.method)?, &self.request.method);
        set_str(field(req, &k.path)?, &self.request.path);
        set_str(field(req, &k.model)?, &self.request.model);
        *field(req, &k.stream)? = Value::from(self.request.stream);
        let tok = field(doc, &k.tokens)?;
        *field(tok, &k.prompt)? = Value::from(self.tokens.prompt);
        set_str(field(tok, &k.source)?, &self.tokens.source);
        *field(tok, &k.max_output)? = Value::from(self.tokens.max_output);
        *field(doc, &k.findings)? = self.findings_value(k);
        let budget = field(doc, &k.budget)?;
        *field(budget, &k.remaining)? = self.remaining_value();
        *field(budget, &k.soft_exceeded)? = self.soft_value();
        Some(())
    }

    fn findings_value(&self, k: &InputKeys) -> Value {
        // Only findings that occurred: the policy can rely on count >= 1.
        let findings: Vec<Value> = self
            .findings
            .iter()
            .filter(|f| f.count > 0)
            .map(|f| {
                obj([
                    (&k.kind, Value::from(f.kind.as_str())),
                    (&k.action, Value::from(f.action.as_str())),
                    (&k.count, Value::from(f.count)),
                ])
            })
            .collect();
        Value::from(findings)
    }

    fn remaining_value(&self) -> Value {
        Value::from(
            self.budget
                .remaining
                .iter()
                .map(|(name, v)| (Value::from(name.as_str()), Value::from(*v)))
                .collect::<BTreeMap<Value, Value>>(),
        )
    }

    fn soft_value(&self) -> Value {
        Value::from(
            self.budget
                .soft_exceeded
                .iter()
                .map(|b| Value::from(b.as_str()))
                .collect::<Vec<Value>>(),
        )
    }

    fn to_value_with(&self, k: &InputKeys) -> Value {
        let s = |x: &str| Value::from(x);
        obj([
            (
                &k.app,
                obj([
                    (&k.id, s(&self.app.id)),
                    (&k.cgroup_id, Value::from(self.app.cgroup_id)),
                    (&k.pid, self.app.pid.map_or(Value::Null, Value::from)),
                ]),
            ),
            (
                &k.destination,
                obj([
                    (&k.origin, s(&self.destination.origin)),
                    (&k.gateway, s(&self.destination.gateway)),
                    (&k.provider, s(&self.destination.provider)),
                ]),
            ),
            (
                &k.request,
                obj([
                    (&k.method, s(&self.request.method)),
                    (&k.path, s(&self.request.path)),
                    (&k.model, s(&self.request.model)),
                    (&k.stream, Value::from(self.request.stream)),
                ]),
            ),
            (
                &k.tokens,
                obj([
                    (&k.prompt, Value::from(self.tokens.prompt)),
                    (&k.source, s(&self.tokens.source)),
                    (&k.max_output, Value::from(self.tokens.max_output)),
                ]),
            ),
            (&k.findings, self.findings_value(k)),
            (
                &k.budget,
                obj([
                    (&k.remaining, self.remaining_value()),
                    (&k.soft_exceeded, self.soft_value()),
                ]),
            ),
        ])
    }
}

/// The calling app.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputApp {
    /// App id (`""` when the identity stage found none).
    pub id: String,
    /// cgroup id of the calling process.
    pub cgroup_id: u64,
    /// pid that connected, when known.
    pub pid: Option<u32>,
}

/// Where the request goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputDestination {
    /// The original destination the app connected to, `ip:port`.
    pub origin: String,
    /// The configured gateway name the proxy routes to (`""` if none).
    pub gateway: String,
    /// Provider dialect: `openai`, `anthropic` or `unknown`.
    pub provider: String,
}

/// The HTTP request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputRequest {
    /// HTTP method.
    pub method: String,
    /// Request path without the query.
    pub path: String,
    /// Requested model (`""` if the body named none).
    pub model: String,
    /// Whether the app asked for a stream.
    pub stream: bool,
}

/// Token numbers known before forwarding.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputTokens {
    /// Prompt tokens counted (tiktoken) or estimated.
    pub prompt: u64,
    /// `tokenizer` or `estimate`.
    pub source: String,
    /// Completion tokens reserved (`max_tokens` or the configured default).
    pub max_output: u64,
}

/// Findings of one type from the redaction stage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputFinding {
    /// Finding type, e.g. `email`, `card`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Action the redaction rule applied: `mask`, `hash` or `block`.
    pub action: String,
    /// How many were found.
    pub count: u64,
}

/// Budget state after this request's admission.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct InputBudget {
    /// Remaining per budget name (e.g. `tokens_per_minute`).
    pub remaining: BTreeMap<String, f64>,
    /// Budgets whose soft limit this request crossed.
    pub soft_exceeded: Vec<String>,
}

/// Overrides the proxy honours for this request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Overrides {
    /// Redaction action per finding type (`mask`, `hash`, `block`) for this app.
    pub redaction: BTreeMap<String, String>,
    /// Models this app may use; `None` when the policy sets no list.
    pub models_allowed: Option<Vec<String>>,
}

/// The policy's answer for one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PolicyDecision {
    /// Forward (true) or 403 (false). In monitor mode always true.
    pub allow: bool,
    /// Why the policy would deny; empty when it would allow.
    pub reasons: BTreeSet<String>,
    /// The app runs in monitor mode: `reasons` is the would-be decision.
    pub monitor: bool,
    /// Non-denying notes (soft budget limits…).
    pub warnings: BTreeSet<String>,
    /// Overrides the proxy honours.
    pub overrides: Overrides,
}

impl PolicyDecision {
    /// True when monitor mode let through a request the policy would deny.
    pub fn would_deny(&self) -> bool {
        self.monitor && !self.reasons.is_empty()
    }
}

static NEXT_BUNDLE_ID: AtomicU64 = AtomicU64::new(1);

/// A loaded, compiled, warmed policy with its data: the immutable part of
/// the state a reload swaps in.
pub struct PolicyBundle {
    id: u64,
    entrypoint: String,
    compiled: CompiledPolicy,
    program: Arc<Program>,
    data: Value,
    data_json: BTreeMap<String, serde_json::Value>,
    data_files: BTreeMap<String, PathBuf>,
    revision: PolicyRevision,
}

impl std::fmt::Debug for PolicyBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyBundle")
            .field("entrypoint", &self.entrypoint)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// A worker thread's evaluator: its VM, the bundle it was built from, and
/// the last input document, kept to be updated in place.
struct Worker {
    bundle: u64,
    vm: RegoVM,
    input: Option<Value>,
}

thread_local! {
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
}

impl PolicyBundle {
    /// Load, compile and warm the policy in `cfg.dir`. Runs on start-up and
    /// reload (off the request path): ~1 ms for the default policy. With
    /// `run_tests_on_reload`, also runs the directory's unit tests.
    pub fn load(cfg: &PolicyConfig) -> Result<Self, PolicyError> {
        let dir = &cfg.dir;
        let (modules, _tests) = list_modules(dir)?;
        if modules.is_empty() {
            return Err(PolicyError::NoModules(dir.clone()));
        }
        let mut hasher = Sha256::new();
        let mut engine = Engine::new();
        for path in &modules {
            let text = read(path)?;
            hash_file(&mut hasher, path, text.as_bytes());
            engine
                .add_policy(path.display().to_string(), text)
                .map_err(|e| PolicyError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
        }
        let (data_json, data_files) = load_data(&dir.join("data"), &mut hasher)?;
        let errors = validate_apps_data(&data_json, &data_files);
        if !errors.is_empty() {
            return Err(PolicyError::Invalid(errors));
        }
        let data = Value::from(serde_json::Value::Object(
            data_json.clone().into_iter().collect(),
        ));
        engine
            .add_data(data.clone())
            .map_err(|e| PolicyError::Data {
                path: dir.join("data"),
                message: e.to_string(),
            })?;
        let compile_err = |e: &dyn std::fmt::Display| PolicyError::Compile {
            entrypoint: cfg.entrypoint.clone(),
            message: e.to_string(),
        };
        let compiled = engine
            .compile_with_entrypoint(&cfg.entrypoint.as_str().into())
            .map_err(|e| compile_err(&e))?;
        let program = regorus::languages::rego::compiler::Compiler::compile_from_policy(
            &compiled,
            &[cfg.entrypoint.as_str()],
        )
        .map_err(|e| compile_err(&e))?;
        let bundle = Self {
            id: NEXT_BUNDLE_ID.fetch_add(1, Ordering::Relaxed),
            entrypoint: cfg.entrypoint.clone(),
            compiled,
            program,
            data,
            data_json,
            data_files,
            revision: PolicyRevision(hex::encode(hasher.finalize())),
        };
        // Warm-up: a policy that cannot answer an empty request is rejected now.
        bundle
            .new_vm()
            .and_then(|mut vm| bundle.eval_on(&mut vm, &PolicyInput::default()))?;
        if cfg.run_tests_on_reload {
            let report = run_tests(dir)?;
            if report.failed() > 0 {
                return Err(PolicyError::TestsFailed {
                    failed: report.failed(),
                    total: report.results.len(),
                    names: report
                        .results
                        .iter()
                        .filter(|r| !r.passed)
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(bundle)
    }

    /// Content hash of the modules and data files in force.
    pub fn revision(&self) -> &PolicyRevision {
        &self.revision
    }

    /// The entry point evaluated per request.
    pub fn entrypoint(&self) -> &str {
        &self.entrypoint
    }

    /// A data file's content as JSON, by file stem (`budgets`, `prices`…),
    /// for modules that read their own typed view of the policy data.
    pub fn data_file(&self, stem: &str) -> Option<(&Path, &serde_json::Value)> {
        let value = self.data_json.get(stem)?;
        let path = self.data_files.get(stem)?;
        Some((path.as_path(), value))
    }

    /// A fresh VM for this bundle. Cheap (no recompilation); used per worker.
    pub fn new_vm(&self) -> Result<RegoVM, PolicyError> {
        let mut vm = RegoVM::new_with_policy(self.compiled.clone());
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| self.eval_err(&e))?;
        Ok(vm)
    }

    /// Decide one request, on the calling thread's own VM (built on first
    /// use and after a reload). Request path: ~µs, no lock, no allocation
    /// beyond the input document. Never panics; an error means "deny" to
    /// the caller (fail closed).
    pub fn decide(&self, input: &PolicyInput) -> Result<PolicyDecision, PolicyError> {
        WORKER.with(|cell| {
            let mut slot = cell.try_borrow_mut().map_err(|e| self.eval_err(&e))?;
            let w = match slot.as_mut() {
                Some(w) if w.bundle == self.id => w,
                _ => slot.insert(Worker {
                    bundle: self.id,
                    vm: self.new_vm()?,
                    input: None,
                }),
            };
            // Drop the VM's reference first, so the update below mutates
            // the document in place instead of copying it.
            w.vm.set_input(Value::Null);
            let doc = match w.input.take() {
                Some(mut doc) => {
                    if input.update_value(&mut doc) {
                        doc
                    } else {
                        input.to_value()
                    }
                }
                None => input.to_value(),
            };
            w.vm.set_input(doc.clone());
            w.input = Some(doc);
            let out =
                w.vm.execute_entry_point_by_name(&self.entrypoint)
                    .map_err(|e| self.eval_err(&e))?;
            self.parse_decision(&out)
        })
    }

    /// Decide one request on a VM the caller owns (from [`Self::new_vm`]).
    pub fn eval_on(
        &self,
        vm: &mut RegoVM,
        input: &PolicyInput,
    ) -> Result<PolicyDecision, PolicyError> {
        vm.set_input(input.to_value());
        let out = vm
            .execute_entry_point_by_name(&self.entrypoint)
            .map_err(|e| self.eval_err(&e))?;
        self.parse_decision(&out)
    }

    fn eval_err(&self, e: &dyn std::fmt::Display) -> PolicyError {
        PolicyError::Eval {
            entrypoint: self.entrypoint.clone(),
            message: e.to_string(),
        }
    }

    fn parse_decision(&self, out: &Value) -> Result<PolicyDecision, PolicyError> {
        let bad = || PolicyError::BadOutput {
            entrypoint: self.entrypoint.clone(),
            got: out.to_string().chars().take(200).collect(),
        };
        let obj = out.as_object().map_err(|_| bad())?;
        let field = |k: &str| obj.get(&Value::from(k));
        let allow = match field("allow") {
            Some(Value::Bool(b)) => *b,
            _ => return Err(bad()),
        };
        let monitor = matches!(field("monitor"), Some(Value::Bool(true)));
        let mut decision = PolicyDecision {
            allow,
            reasons: strings(field("reasons")),
            monitor,
            warnings: strings(field("warnings")),
            overrides: Overrides::default(),
        };
        if let Some(Value::Object(ov)) = field("overrides") {
            if let Some(Value::Object(r)) = ov.get(&Value::from("redaction")) {
                for (k, v) in r.iter() {
                    if let (Ok(k), Ok(v)) = (k.as_string(), v.as_string()) {
                        decision
                            .overrides
                            .redaction
                            .insert(k.to_string(), v.to_string());
                    }
                }
            }
            let models = strings(ov.get(&Value::from("models_allowed")));
            if !models.is_empty() {
                decision.overrides.models_allowed = Some(models.into_iter().collect());
            }
        }
        Ok(decision)
    }
}

/// Strings of a Rego set or array; anything else contributes nothing.
fn strings(v: Option<&Value>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    match v {
        Some(Value::Set(s)) => {
            for x in s.iter() {
                if let Ok(x) = x.as_string() {
                    out.insert(x.to_string());
                }
            }
        }
        Some(Value::Array(a)) => {
            for x in a.iter() {
                if let Ok(x) = x.as_string() {
                    out.insert(x.to_string());
                }
            }
        }
        _ => {}
    }
    out
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn hash_file(hasher: &mut Sha256, path: &Path, bytes: &[u8]) {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    hasher.update((name.len() as u64).to_le_bytes());
    hasher.update(name.as_bytes());
    hasher.update((bytes.len() as u64).to_le_bytes());
    hasher.update(bytes);
}

/// Sorted files of `dir` (not recursive). Names starting with `.` are
/// skipped: Kubernetes keeps `..data` and timestamped dirs there.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, PolicyError> {
    let io = |source| PolicyError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if !hidden && path.is_file() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// (policy modules, test modules) in `dir`.
fn list_modules(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), PolicyError> {
    let mut modules = Vec::new();
    let mut tests = Vec::new();
    for path in list_dir(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with("_test.rego") {
            tests.push(path);
        } else if name.ends_with(".rego") {
            modules.push(path);
        }
    }
    Ok((modules, tests))
}

type DataFiles = (
    BTreeMap<String, serde_json::Value>,
    BTreeMap<String, PathBuf>,
);

/// `data/*.yaml|yml|json` → `data.<stem>`. A missing `data/` is an empty data document.
fn load_data(dir: &Path, hasher: &mut Sha256) -> Result<DataFiles, PolicyError> {
    let mut values = BTreeMap::new();
    let mut files = BTreeMap::new();
    if !dir.is_dir() {
        return Ok((values, files));
    }
    for path in list_dir(dir)? {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let is_yaml = matches!(ext.as_deref(), Some("yaml" | "yml"));
        if !is_yaml && ext.as_deref() != Some("json") {
            continue;
        }
        let text = read(&path)?;
        hash_file(hasher, &path, text.as_bytes());
        let data_err = |message: String| PolicyError::Data {
            path: path.clone(),
            message,
        };
        let value: serde_json::Value = if is_yaml {
            serde_yaml::from_str(&text).map_err(|e| data_err(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| data_err(e.to_string()))?
        };
        if !value.is_object() {
            return Err(data_err("top level must be a mapping".to_string()));
        }
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut value = value;
        if stem == "apps" {
            normalize_apps(&mut value);
        }
        if let Some(prev) = files.get(&stem) {
            return Err(data_err(format!(
                "data key {stem:?} is also defined by {prev:?}"
            )));
        }
        values.insert(stem.clone(), value);
        files.insert(stem, path);
    }
    Ok((values, files))
}

/// Fill in what `apps.yaml` may leave out, so the policy reads every field
/// without `object.get` (each builtin call costs ~3k VM instructions): every
/// app gets `mode: enforce`, `models: []`, `redaction: {}`, and its
/// `blocked_findings` become the union of `defaults.blocked_findings` and its
/// own. Entries of the wrong shape are left for validation to report.
fn normalize_apps(v: &mut serde_json::Value) {
    use serde_json::{json, Value as J};
    let Some(root) = v.as_object_mut() else {
        return;
    };
    let defaults: Vec<J> = root
        .get("defaults")
        .and_then(|d| d.get("blocked_findings"))
        .and_then(J::as_array)
        .cloned()
        .unwrap_or_default();
    let Some(apps) = root.get_mut("apps").and_then(J::as_object_mut) else {
        return;
    };
    for entry in apps.values_mut() {
        let Some(e) = entry.as_object_mut() else {
            continue;
        };
        e.entry("mode").or_insert_with(|| json!("enforce"));
        e.entry("models").or_insert_with(|| json!([]));
        e.entry("redaction").or_insert_with(|| json!({}));
        let own = e.entry("blocked_findings").or_insert_with(|| json!([]));
        if let Some(list) = own.as_array_mut() {
            for t in &defaults {
                if !list.contains(t) {
                    list.push(t.clone());
                }
            }
        }
    }
}

/// `apps.yaml` as the default policy reads it.
#[derive(Debug)]
struct AppsData {
    defaults: AppsDefaults,
    apps: BTreeMap<String, AppEntry>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsDefaults {
    #[serde(default)]
    blocked_findings: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppEntry {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    blocked_findings: Vec<String>,
    #[serde(default)]
    redaction: BTreeMap<String, String>,
}

/// Typed checks of `apps.yaml` (when present): every error, with file and key.
fn validate_apps_data(
    data: &BTreeMap<String, serde_json::Value>,
    files: &BTreeMap<String, PathBuf>,
) -> Vec<String> {
    let (Some(value), Some(path)) = (data.get("apps"), files.get("apps")) else {
        return Vec::new();
    };
    let file = path.display();
    let mut errors = Vec::new();
    let Some(obj) = value.as_object() else {
        return vec![format!("{file}: top level must be a mapping")];
    };
    for k in obj.keys() {
        if k != "defaults" && k != "apps" {
            errors.push(format!(
                "{file}: unknown key {k:?} (expected defaults, apps)"
            ));
        }
    }
    let defaults: AppsDefaults = match obj.get("defaults") {
        None | Some(serde_json::Value::Null) => AppsDefaults::default(),
        Some(d) => serde_json::from_value(d.clone()).unwrap_or_else(|e| {
            errors.push(format!("{file}: defaults: {e}"));
            AppsDefaults::default()
        }),
    };
    let mut apps = BTreeMap::new();
    match obj.get("apps") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(m)) => {
            for (name, e) in m {
                match serde_json::from_value::<AppEntry>(e.clone()) {
                    Ok(a) => {
                        apps.insert(name.clone(), a);
                    }
                    Err(err) => errors.push(format!("{file}: apps.{name}: {err}")),
                }
            }
        }
        Some(other) => errors.push(format!("{file}: apps must be a mapping, got {other}")),
    }
    let parsed = AppsData { defaults, apps };
    for t in &parsed.defaults.blocked_findings {
        if t.is_empty() {
            errors.push(format!(
                "{file}: defaults.blocked_findings has an empty type"
            ));
        }
    }
    for (app, entry) in &parsed.apps {
        if let Some(mode) = &entry.mode {
            if mode != "enforce" && mode != "monitor" {
                errors.push(format!(
                    "{file}: apps.{app}.mode is {mode:?}, expected \"enforce\" or \"monitor\""
                ));
            }
        }
        for (kind, action) in &entry.redaction {
            if !matches!(action.as_str(), "mask" | "hash" | "block") {
                errors.push(format!(
                    "{file}: apps.{app}.redaction.{kind} is {action:?}, expected mask, hash or block"
                ));
            }
        }
        if entry.models.iter().any(String::is_empty) {
            errors.push(format!("{file}: apps.{app}.models has an empty model name"));
        }
        if entry.blocked_findings.iter().any(String::is_empty) {
            errors.push(format!(
                "{file}: apps.{app}.blocked_findings has an empty type"
            ));
        }
    }
    errors
}

/// One `test_` rule's outcome.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// `data.<package>.<rule>`.
    pub name: String,
    /// The module that defines it.
    pub file: PathBuf,
    /// True when the rule evaluated to `true`.
    pub passed: bool,
    /// Why it failed: `false`/undefined or the evaluation error.
    pub detail: Option<String>,
    /// Time taken.
    pub duration: Duration,
}

/// The outcome of [`run_tests`].
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    /// One entry per test rule, in file order.
    pub results: Vec<TestResult>,
}

impl TestReport {
    /// Number of failed tests.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }

    /// Number of passed tests.
    pub fn passed(&self) -> usize {
        self.results.len() - self.failed()
    }

    /// Human-readable report in the shape of `opa test -v`, ending with
    /// `N passed, N failed`.
    pub fn render(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            let status = if r.passed { "PASS" } else { "FAIL" };
            let _ = write!(s, "{}: {} ({:?})", r.file.display(), r.name, r.duration);
            let _ = match &r.detail {
                Some(d) => writeln!(s, ": {status}: {d}"),
                None => writeln!(s, ": {status}"),
            };
        }
        let _ = writeln!(s, "{} passed, {} failed", self.passed(), self.failed());
        s
    }
}

/// Run every `test_` rule of the Rego modules in `dir` (with `dir/data`
/// loaded as for a real decision). A test passes when it evaluates to
/// `true`; `false`, undefined or an error fail it. A module that does not
/// parse is an error, not a failure. This is `airlock policy test DIR`:
/// print [`TestReport::render`] and exit non-zero when `failed() > 0`.
pub fn run_tests(dir: &Path) -> Result<TestReport, PolicyError> {
    let (mut modules, tests) = list_modules(dir)?;
    modules.extend(tests.iter().cloned());
    let mut engine = Engine::new();
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    for path in &modules {
        let text = read(path)?;
        for name in test_rules(&text) {
            if !found.iter().any(|(n, _)| *n == name) {
                found.push((name, path.clone()));
            }
        }
        engine
            .add_policy(path.display().to_string(), text)
            .map_err(|e| PolicyError::Parse {
                path: path.clone(),
                message: e.to_string(),
            })?;
    }
    let mut scratch = Sha256::new();
    let (data, _) = load_data(&dir.join("data"), &mut scratch)?;
    engine
        .add_data(Value::from(serde_json::Value::Object(
            data.into_iter().collect(),
        )))
        .map_err(|e| PolicyError::Data {
            path: dir.join("data"),
            message: e.to_string(),
        })?;
    let mut report = TestReport::default();
    for (name, file) in found {
        let started = Instant::now();
        let outcome = engine.eval_rule(name.clone());
        let (passed, detail) = match outcome {
            Ok(Value::Bool(true)) => (true, None),
            Ok(Value::Undefined) => (false, Some("undefined".to_string())),
            Ok(v) => (false, Some(format!("got {v}"))),
            Err(e) => (false, Some(format!("error: {e}"))),
        };
        report.results.push(TestResult {
            name,
            file,
            passed,
            detail,
            duration: started.elapsed(),
        });
    }
    Ok(report)
}

/// `airlock policy test DIR`: run the tests, print the report to stdout
/// (errors to stderr) and return the process exit code: 0 all passed,
/// 1 a test failed, 2 the directory did not load.
pub fn test_command(dir: &Path) -> i32 {
    match run_tests(dir) {
        Ok(report) => {
            print!("{}", report.render());
            if report.failed() > 0 {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// `data.<pkg>.test_*` rule paths of one module, found from its text: the
/// `package` line and rule heads starting a line with `test_`.
fn test_rules(text: &str) -> Vec<String> {
    let mut package = None;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("package ") {
            package = Some(rest.trim().to_string());
            continue;
        }
        if !line.starts_with("test_") {
            continue;
        }
        let name: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if let Some(pkg) = &package {
            let full = format!("data.{pkg}.{name}");
            if !out.contains(&full) {
                out.push(full);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;

    fn policies() -> PolicyConfig {
        PolicyConfig {
            dir: PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../policies")),
            ..PolicyConfig::default()
        }
    }

    pub(crate) fn input(app: &str, model: &str) -> PolicyInput {
        PolicyInput {
            app: InputApp {
                id: app.to_string(),
                cgroup_id: 42,
                pid: Some(7),
            },
            request: InputRequest {
                method: "POST".to_string(),
                path: "/v1/chat/completions".to_string(),
                model: model.to_string(),
                stream: false,
            },
            ..PolicyInput::default()
        }
    }

    #[test]
    fn direct_value_matches_serde_form() {
        let mut i = input("a", "m");
        i.findings.push(InputFinding {
            kind: "email".into(),
            action: "mask".into(),
            count: 2,
        });
        i.budget.remaining.insert("tokens_per_minute".into(), 12.5);
        i.budget.soft_exceeded.push("concurrent".into());
        let via_serde = Value::from(serde_json::to_value(&i).unwrap());
        assert_eq!(i.to_value(), via_serde);
        i.app.pid = None;
        assert_eq!(i.to_value(), Value::from(serde_json::to_value(&i).unwrap()));
        // In-place update from another input gives the same document.
        let mut doc = input("other", "x").to_value();
        let shared = doc.clone(); // a reference still held elsewhere must not change
        assert!(i.update_value(&mut doc));
        assert_eq!(doc, i.to_value());
        assert_eq!(shared, input("other", "x").to_value());
    }

    #[test]
    fn consecutive_decisions_on_one_worker_do_not_leak_state() {
        let b = PolicyBundle::load(&policies()).unwrap();
        let mut blocked = input("support-bot", "gpt-4o");
        blocked.findings.push(InputFinding {
            kind: "card".into(),
            action: "mask".into(),
            count: 1,
        });
        let ok = input("support-bot", "gpt-4o");
        for _ in 0..3 {
            assert!(!b.decide(&blocked).unwrap().allow);
            assert!(b.decide(&ok).unwrap().allow);
            assert!(!b.decide(&input("nobody", "gpt-4o")).unwrap().allow);
        }
    }

    #[test]
    fn known_app_and_model_allowed() {
        let b = PolicyBundle::load(&policies()).unwrap();
        let d = b.decide(&input("support-bot", "gpt-4o-mini")).unwrap();
        assert!(d.allow, "{d:?}");
        assert!(d.reasons.is_empty());
        assert_eq!(
            d.overrides.models_allowed,
            Some(vec!["gpt-4o".to_string(), "gpt-4o-mini".to_string()])
        );
    }

    #[test]
    fn unknown_app_denied() {
        let b = PolicyBundle::load(&policies()).unwrap();
        let d = b.decide(&input("stranger", "gpt-4o")).unwrap();
        assert!(!d.allow);
        assert!(d.reasons.contains("unknown_app"), "{d:?}");
    }

    #[test]
    fn model_not_allowed_denied_with_reason() {
        let b = PolicyBundle::load(&policies()).unwrap();
        let d = b.decide(&input("summarizer", "gpt-4o")).unwrap();
        assert!(!d.allow);
        assert!(d.reasons.contains("model_not_allowed:gpt-4o"), "{d:?}");
        assert_eq!(
            d.overrides.redaction.get("email").map(String::as_str),
            Some("mask")
        );
    }

    #[test]
    fn blocked_finding_denies() {
        let b = PolicyBundle::load(&policies()).unwrap();
        let mut i = input("support-bot", "gpt-4o");
        i.findings.push(InputFinding {
            kind: "card".into(),
            action: "mask".into(),
            count: 1,
        });
        let d = b.decide(&i).unwrap();
        assert!(!d.allow);
        assert!(d.reasons.contains("finding_blocked:card"), "{d:?}");
    }

    #[test]
    fn monitor_allows_and_records_would_be_deny() {
        let b = PolicyBundle::load(&policies()).unwrap();
        let d = b.decide(&input("playground", "gpt-4o")).unwrap();
        assert!(d.allow);
        assert!(d.monitor);
        assert!(d.would_deny());
        assert!(d.reasons.contains("model_not_allowed:gpt-4o"), "{d:?}");
    }

    #[test]
    fn vm_agrees_with_interpreter() {
        let cfg = policies();
        let b = PolicyBundle::load(&cfg).unwrap();
        let mut engine = Engine::new();
        for m in list_modules(&cfg.dir).unwrap().0 {
            engine.add_policy_from_file(&m).unwrap();
        }
        let mut h = Sha256::new();
        let (data, _) = load_data(&cfg.dir.join("data"), &mut h).unwrap();
        engine
            .add_data(Value::from(serde_json::Value::Object(
                data.into_iter().collect(),
            )))
            .unwrap();
        for (app, model) in [
            ("support-bot", "gpt-4o"),
            ("support-bot", "o3"),
            ("nobody", "gpt-4o"),
            ("playground", "x"),
            ("summarizer", "claude-sonnet-4-5"),
        ] {
            let i = input(app, model);
            engine.set_input(Value::from(serde_json::to_value(&i).unwrap()));
            let out = engine.eval_rule(DEFAULT_ENTRYPOINT.to_string()).unwrap();
            assert_eq!(
                b.parse_decision(&out).unwrap(),
                b.decide(&i).unwrap(),
                "{app} {model}"
            );
        }
    }

    #[test]
    fn reload_uses_new_bundle_on_same_thread() {
        let a = PolicyBundle::load(&policies()).unwrap();
        let b = PolicyBundle::load(&policies()).unwrap();
        assert_eq!(a.revision(), b.revision());
        assert!(a.decide(&input("support-bot", "gpt-4o")).unwrap().allow);
        assert!(b.decide(&input("support-bot", "gpt-4o")).unwrap().allow);
        assert!(!a.decide(&input("x", "gpt-4o")).unwrap().allow);
    }

    #[test]
    fn shipped_rego_tests_pass() {
        let report = run_tests(&policies().dir).unwrap();
        print!("{}", report.render());
        assert!(report.results.len() >= 5);
        assert_eq!(report.failed(), 0, "{}", report.render());
    }

    fn temp_policy(extra_test: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let src = policies().dir;
        std::fs::copy(src.join("airlock.rego"), tmp.path().join("airlock.rego")).unwrap();
        std::fs::create_dir(tmp.path().join("data")).unwrap();
        for f in ["apps.yaml", "budgets.yaml", "prices.yaml"] {
            std::fs::copy(src.join("data").join(f), tmp.path().join("data").join(f)).unwrap();
        }
        std::fs::write(tmp.path().join("broken_test.rego"), extra_test).unwrap();
        tmp
    }

    #[test]
    fn policy_test_fails_on_broken_test() {
        let tmp = temp_policy(
            "package broken_test\n\nimport data.airlock\n\ntest_unknown_app_allowed if {\n\td := airlock.decision with input as {\"app\": {\"id\": \"nobody\"}, \"request\": {\"model\": \"gpt-4o\", \"method\": \"POST\"}}\n\td.allow\n}\n\ntest_true if true\n",
        );
        let report = run_tests(tmp.path()).unwrap();
        let text = report.render();
        assert_eq!(report.failed(), 1, "{text}");
        assert_eq!(report.passed(), 1, "{text}");
        assert!(text.contains("FAIL"), "{text}");
        assert!(text.ends_with("1 passed, 1 failed\n"), "{text}");
        // And with run_tests_on_reload the bundle is refused.
        let cfg = PolicyConfig {
            dir: tmp.path().to_path_buf(),
            run_tests_on_reload: true,
            ..PolicyConfig::default()
        };
        assert!(matches!(
            PolicyBundle::load(&cfg),
            Err(PolicyError::TestsFailed { failed: 1, .. })
        ));
    }

    #[test]
    fn broken_rego_and_bad_data_rejected() {
        let tmp = temp_policy("package broken_test\n");
        std::fs::write(
            tmp.path().join("extra.rego"),
            "package airlock\n\nallow if {\n",
        )
        .unwrap();
        let cfg = PolicyConfig {
            dir: tmp.path().to_path_buf(),
            ..PolicyConfig::default()
        };
        let err = PolicyBundle::load(&cfg).unwrap_err();
        assert!(matches!(err, PolicyError::Parse { .. }), "{err}");
        std::fs::remove_file(tmp.path().join("extra.rego")).unwrap();
        std::fs::write(
            tmp.path().join("data/apps.yaml"),
            "apps:\n  a: { mode: audit, modles: [x] }\n  b: { redaction: { email: erase } }\n",
        )
        .unwrap();
        let err = PolicyBundle::load(&cfg).unwrap_err().to_string();
        // Both bad entries are reported, each with its key path.
        assert!(err.contains("apps.a: unknown field `modles`"), "{err}");
        assert!(err.contains("apps.b.redaction.email is \"erase\""), "{err}");
    }

    #[test]
    fn config_validate_collects_errors() {
        let cfg = PolicyConfig {
            dir: PathBuf::from("/nonexistent/policies"),
            entrypoint: "airlock.decision".into(),
            run_tests_on_reload: false,
        };
        let errs = cfg.validate();
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs[0].starts_with("policy.dir"));
        assert!(errs[1].starts_with("policy.entrypoint"));
        assert!(policies().validate().is_empty());
    }
}
