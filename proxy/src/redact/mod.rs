//! Inline redaction of prompt payloads (the `redact` stage of a request's walk).
//!
//! Runs after identity and routing, before budget and policy: the proxy hands
//! the buffered request body to [`Redactor::redact`], which decodes any
//! `Content-Encoding`, walks the JSON (or takes `text/plain` whole), runs the
//! detectors over every string the model will see, and returns an
//! [`Outcome`]: the rewritten body (or `None` to forward the original bytes),
//! the findings (never the values) and a block reason. A body it cannot inspect is a [`Refusal`], never forwarded.
//!
//! Cost: a single pass over the body; strings without escapes or characters
//! NFKC would change are scanned in place (no copy); a trigger pass over byte
//! masks finds the windows, and each window runs only the rules its shape or
//! literals allow. See `docs/redaction.md` for numbers.
//!
//! Never panics on any input, and memory is bounded by `max_bytes` times a
//! small constant (the decoded body and its two bit masks, one normalised
//! string and its offset map, its byte-class masks and, with dictionaries, a
//! lowercased copy).

mod config;
mod confirm;
mod decode;
mod detectors;
mod json;
mod normalize;
mod seam;
mod simd;
mod trigger;

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

pub use config::{ConfigLocation, RedactConfigError};
use detectors::Validator;
use json::Seg;
use normalize::Norm;
use seam::{text_part, Seam};
use trigger::{Class, Windows};

/// What a rule does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace with `[REDACTED:TYPE]`.
    Mask,
    /// Replace with `[TYPE:xxxxxxxx]`, a keyed hash stable per app.
    Hash,
    /// Refuse the request (403).
    Block,
    /// Count and log only; the body is not changed.
    Monitor,
}

impl Action {
    /// Parse the lowercase name used in configuration and policy.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "mask" => Some(Action::Mask),
            "hash" => Some(Action::Hash),
            "block" => Some(Action::Block),
            "monitor" => Some(Action::Monitor),
            _ => None,
        }
    }

    /// The lowercase name (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Mask => "mask",
            Action::Hash => "hash",
            Action::Block => "block",
            Action::Monitor => "monitor",
        }
    }

    /// Priority when two findings overlap: enforcing actions beat monitor.
    fn rank(self) -> u8 {
        match self {
            Action::Block => 3,
            Action::Mask | Action::Hash => 2,
            Action::Monitor => 1,
        }
    }
}

/// One request body to scan, with what the proxy knows about it.
#[derive(Debug, Clone, Copy)]
pub struct ScanRequest<'a> {
    /// The body as received from the app.
    pub body: &'a [u8],
    /// The `Content-Type` header, if any.
    pub content_type: Option<&'a str>,
    /// The `Content-Encoding` header, if any.
    pub content_encoding: Option<&'a str>,
    /// Request path, e.g. `/v1/chat/completions` (the provider shape).
    pub path: &'a str,
    /// The app the request belongs to (keys the `hash` action).
    pub app: &'a str,
    /// Largest body accepted, before and after decompression.
    pub max_bytes: usize,
    /// Per-type action overrides from the policy (type name → action).
    pub overrides: Option<&'a HashMap<String, Action>>,
}

/// One thing found. Carries where and what kind, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Finding type, e.g. `EMAIL`, `CARD`, `AWS_KEY`.
    #[serde(rename = "type")]
    pub kind: Cow<'static, str>,
    /// The rule that fired, e.g. `phone.e164` or a dictionary's name.
    pub rule: Cow<'static, str>,
    /// The action taken (after policy overrides).
    pub action: Action,
    /// JSON path of the string (`$` for a text body); keys holding a finding print as `[*]`.
    pub path: Arc<str>,
    /// True when the finding is in an object key rather than a value.
    pub in_key: bool,
    /// Byte span in the scanned input (the decoded body when it was compressed).
    pub start: usize,
    /// End of the byte span (exclusive).
    pub end: usize,
}

/// The result of scanning one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The body to forward; `None` means forward the original bytes unchanged.
    pub body: Option<Vec<u8>>,
    /// True when `body` is the decoded form: drop `Content-Encoding`.
    pub decompressed: bool,
    /// What was found, in body order.
    pub findings: Vec<Finding>,
    /// Set when a `block` rule fired: the reason (types and rule, no values).
    pub blocked: Option<String>,
}

/// A body that cannot be inspected and so must not be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Refusal {
    /// Claims JSON (or looks like it) but does not parse: 400.
    #[error("request body is not valid JSON: {0}")]
    BadJson(String),
    /// An object repeats a key: 400.
    #[error("request body has a {0}")]
    DuplicateKey(String),
    /// Unknown or undecodable content coding, or a body that is not text: 415.
    #[error("request body cannot be inspected: {0}")]
    UnsupportedEncoding(String),
    /// Larger than `max_bytes`, before or after decoding: 413.
    #[error("request body is larger than the inspection limit")]
    TooLarge,
}

/// Count findings per type (for the decision record and metrics).
pub fn findings_by_type(findings: &[Finding]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for f in findings {
        *m.entry(f.kind.to_string()).or_insert(0) += 1;
    }
    m
}

/// Name, type and default action of one compiled rule.
#[derive(Debug, Clone)]
struct Meta {
    name: &'static str,
    kind: &'static str,
    action: Action,
}

/// A rule's name or type as a `&'static str`: one copy of each distinct
/// string for the life of the process. A finding copies two of them; as
/// shared `Arc<str>`s that was two atomic increments and two decrements a
/// finding. Names come from the built-ins and the policy files, so what is
/// kept grows only with names never seen before, not with reloads.
fn intern(s: &str) -> &'static str {
    static NAMES: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<&'static str>>> =
        std::sync::LazyLock::new(Default::default);
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(&n) = names.get(s) {
        return n;
    }
    let n: &'static str = Box::leak(s.to_owned().into_boxed_str());
    names.insert(n);
    n
}

struct Rule {
    re: Regex,
    group: Option<usize>,
    validator: Validator,
    /// Digit-cluster shapes this rule can match (see `trigger::shape`).
    need: u16,
    /// A hand-written matcher returning what `re` would (built-ins only).
    fast: Option<confirm::Matcher>,
    /// The fewest bytes a match of `re` has: shorter strings are not
    /// searched (a search costs its set-up even where it finds nothing,
    /// and a chat body is a dozen short strings around the prompt).
    min_len: usize,
}

/// The rules run behind one trigger class, with a set to pick among them
/// inside a window.
struct ClassRules {
    class: Class,
    set: Option<RegexSet>,
    rules: Vec<usize>,
    /// When every rule of the class starts with one of a few literals:
    /// picks the rules to run by them. Cheaper than the set on short windows.
    lits: Option<LitFilter>,
    /// Digit windows: for each [`trigger::shape`] bit, the rules (as bits
    /// of positions in `rules`) that can match a cluster of that shape, so
    /// a window runs its rules without a test per rule of the class.
    by_shape: Option<[u64; 16]>,
    /// Digit windows: the `iban` rule's bit in `rules` (0 without it). It
    /// runs first, and the other digit rules only around the IBANs it finds.
    iban_bit: u64,
}

/// Compiled, immutable rule set; `Send + Sync`; built once per config (re)load.
pub struct Redactor {
    rules: Vec<Rule>,
    classes: Vec<ClassRules>,
    /// Dictionary terms: a leftmost-longest automaton for the scan (it keeps
    /// its SIMD prefilter) and an overlapping one for the rare match that is
    /// not a whole word, where a shorter term inside may still be.
    dict: Option<Dict>,
    /// Pattern id of the dictionary automaton → index into `meta`.
    dict_meta: Vec<usize>,
    /// `rules` (same index), then dictionaries, then the JSON-key secret rule.
    meta: Vec<Meta>,
    /// `meta` index and entropy floor of the secret-by-JSON-key check.
    secret_key: Option<(usize, f64)>,
    /// Digits in a cluster that open a window (4 with IPv4 on, else 7).
    min_digits: usize,
    hash_key: [u8; 32],
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field(
                "rules",
                &self.meta.iter().map(|m| m.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Hex SHA-256 of a body as received (the decision record's `prompt_sha256`).
/// Kept out of [`Redactor::redact`]: the record needs it whether or not
/// redaction runs, and the proxy pays for it once.
pub fn prompt_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// HMAC-SHA256 (RFC 2104) over the concatenation of `parts`.
fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// A per-process random key, used when the configuration names none
/// (tokens are then stable only for the life of the process).
fn process_key() -> [u8; 32] {
    use std::hash::{BuildHasher, Hasher};
    let mut h = Sha256::new();
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let mut buf = [0u8; 32];
        if std::io::Read::read_exact(&mut f, &mut buf).is_ok() {
            h.update(buf);
        }
    }
    let mut s = std::collections::hash_map::RandomState::new().build_hasher();
    s.write_u32(std::process::id());
    h.update(s.finish().to_le_bytes());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.update(d.as_nanos().to_le_bytes());
    }
    h.finalize().into()
}

impl Redactor {
    /// Load `redaction.yaml` and the dictionary files it names (relative to
    /// its directory). Runs at start and on reload, off the request path.
    /// Every problem is returned, each naming file, line if known, key and value.
    pub fn load(path: &Path) -> Result<Redactor, Vec<RedactConfigError>> {
        let cfg = config::load(path)?;
        Self::build(&cfg).map_err(|reason| {
            vec![RedactConfigError::InvalidValue {
                at: ConfigLocation {
                    file: path.to_path_buf(),
                    line: None,
                    key: "rules".into(),
                },
                value: String::new(),
                reason,
            }]
        })
    }

    /// The built-in detectors at their defaults (IPv4/IPv6 off), all masking,
    /// no dictionaries, a per-process hash key.
    pub fn builtin() -> Redactor {
        match Self::build(&config::FileCfg::default()) {
            Ok(r) => r,
            // The built-in patterns are fixed and covered by tests; should
            // the set ever not compile, an empty redactor still refuses
            // nothing and finds nothing rather than panicking.
            Err(_) => Redactor {
                rules: Vec::new(),
                classes: Vec::new(),
                dict: None,
                dict_meta: Vec::new(),
                meta: Vec::new(),
                secret_key: None,
                min_digits: 7,
                hash_key: process_key(),
            },
        }
    }

    fn build(cfg: &config::FileCfg) -> Result<Redactor, String> {
        let mut rules = Vec::new();
        let mut meta = Vec::new();
        let mut classes: Vec<ClassRules> = Vec::new();
        let mut add = |class: Class, idx: usize| match classes.iter_mut().find(|c| c.class == class)
        {
            Some(c) => c.rules.push(idx),
            None => classes.push(ClassRules {
                class,
                set: None,
                rules: vec![idx],
                lits: None,
                by_shape: None,
                iban_bit: 0,
            }),
        };
        let mut patterns: Vec<String> = Vec::new();
        let mut secret_key = None;
        for b in detectors::builtins() {
            let dc = cfg.detectors.iter().find(|d| d.id == b.detector);
            if !dc.and_then(|d| d.enabled).unwrap_or(b.enabled) {
                continue;
            }
            let action = dc
                .and_then(|d| d.action)
                .or(cfg.default_action)
                .unwrap_or(b.action);
            let validator = match (b.validator, dc.and_then(|d| d.min_entropy)) {
                (Validator::Entropy(_), Some(x)) => Validator::Entropy(x),
                (v, _) => v,
            };
            if b.detector == "secret_assignment" {
                let floor = match validator {
                    Validator::Entropy(x) => x,
                    _ => detectors::DEFAULT_SECRET_ENTROPY,
                };
                secret_key = Some((action, floor));
            }
            let re = compile(b.pattern).map_err(|e| format!("built-in rule {}: {e}", b.rule))?;
            let group = re.capture_names().position(|n| n == Some("v"));
            patterns.push(b.pattern.to_string());
            add(detectors::class_of(b.detector), rules.len());
            rules.push(Rule {
                fast: group
                    .is_none()
                    .then(|| confirm::Matcher::for_rule(b.rule))
                    .flatten(),
                re,
                group,
                validator,
                need: trigger::shape::needed_by(b.rule),
                min_len: min_match_len(b.pattern),
            });
            meta.push(Meta {
                name: b.rule,
                kind: b.kind,
                action,
            });
        }
        for r in &cfg.rules {
            let re = compile(&r.pattern).map_err(|e| format!("rule {}: {e}", r.name))?;
            let group = re.capture_names().position(|n| n == Some("v"));
            patterns.push(r.pattern.clone());
            add(Class::Always, rules.len());
            rules.push(Rule {
                re,
                group,
                validator: r.validator,
                need: !0,
                fast: None,
                min_len: min_match_len(&r.pattern),
            });
            meta.push(Meta {
                name: intern(&r.name),
                kind: intern(&r.kind),
                action: r.action,
            });
        }
        for c in &mut classes {
            if c.class == Class::Digits && c.rules.len() <= 64 {
                let mut t = [0u64; 16];
                for (k, &i) in c.rules.iter().enumerate() {
                    if meta.get(i).is_some_and(|m: &Meta| m.name == "iban") {
                        c.iban_bit = 1 << k;
                    }
                    let need = rules.get(i).map_or(!0, |r: &Rule| r.need);
                    for (bit, m) in t.iter_mut().enumerate() {
                        if need & (1 << bit) != 0 {
                            *m |= 1 << k;
                        }
                    }
                }
                c.by_shape = Some(t);
            }
            c.lits = LitFilter::new(&c.rules, &meta);
            // digit windows pick their rules by the cluster's shape instead
            if c.lits.is_none()
                && !matches!(c.class, Class::Always | Class::Digits)
                && c.rules.len() > 1
            {
                let pats: Vec<&str> = c
                    .rules
                    .iter()
                    .filter_map(|&i| patterns.get(i).map(String::as_str))
                    .collect();
                // no set (the size limit) just means every rule runs in each window
                c.set = RegexSetBuilder::new(pats)
                    .size_limit(1 << 24)
                    .dfa_size_limit(1 << 23)
                    .build()
                    .ok();
            }
        }
        let mut terms: Vec<String> = Vec::new();
        let mut dict_meta = Vec::new();
        for d in &cfg.dictionaries {
            let mi = meta.len();
            meta.push(Meta {
                name: intern(&d.name),
                kind: intern(&d.kind),
                action: d.action,
            });
            for t in &d.terms {
                let mut n = Norm::default();
                normalize::normalize(t, 0, false, &mut n);
                // matched against an ASCII-lowercased copy of the text: a
                // case-sensitive automaton keeps its fast (SIMD) prefilter
                let n = n.text.trim().to_ascii_lowercase();
                if !n.is_empty() {
                    terms.push(n);
                    dict_meta.push(mi);
                }
            }
        }
        let dict = if terms.is_empty() {
            None
        } else {
            let build = |kind: MatchKind| {
                AhoCorasick::builder()
                    .match_kind(kind)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&terms)
                    .or_else(|_| AhoCorasick::builder().match_kind(kind).build(&terms))
                    .map_err(|e| format!("dictionaries: {e}"))
            };
            Some(Dict {
                longest: build(MatchKind::LeftmostLongest)?,
                all: build(MatchKind::Standard)?,
                max_len: terms.iter().map(String::len).max().unwrap_or(0),
            })
        };
        let secret_key = secret_key.map(|(action, floor)| {
            meta.push(Meta {
                name: "secret_assignment.json_key",
                kind: "SECRET",
                action,
            });
            (meta.len() - 1, floor)
        });
        let min_digits = if meta.iter().any(|m| m.kind == "IPV4") {
            4
        } else {
            7
        };
        Ok(Redactor {
            rules,
            classes,
            dict,
            dict_meta,
            meta,
            secret_key,
            min_digits,
            hash_key: cfg
                .hash_key
                .as_deref()
                .map_or_else(process_key, |k| hmac(k, &[b"airlock/redact/master"])),
        })
    }

    /// Names, types and default actions of every compiled rule, for the
    /// effective-config dump on the admin port.
    pub fn rules(&self) -> Vec<(String, String, Action)> {
        self.meta
            .iter()
            .map(|m| (m.name.to_string(), m.kind.to_string(), m.action))
            .collect()
    }

    /// Scan one request body. Runs on the request path: never panics, and
    /// memory stays within a small multiple of `max_bytes`.
    pub fn redact(&self, req: &ScanRequest<'_>) -> Result<Outcome, Refusal> {
        if req.body.len() > req.max_bytes {
            return Err(Refusal::TooLarge);
        }
        let decoded = decode::decode(req.body, req.content_encoding, req.max_bytes)?;
        let input: &[u8] = decoded.as_deref().unwrap_or(req.body);
        let json = is_json(req.content_type, input);
        let text = match simdutf8::basic::from_utf8(input) {
            Ok(t) => t,
            Err(_) if json => return Err(Refusal::BadJson("body is not valid UTF-8".into())),
            Err(_) => {
                return Err(Refusal::UnsupportedEncoding(format!(
                    "body of type {:?} is not UTF-8 text",
                    req.content_type.unwrap_or("(none)")
                )))
            }
        };
        let mut scratch = SCRATCH.with(Cell::take).unwrap_or_default();
        scratch.repl.clear();
        let (mut special, mut stops) = (
            std::mem::take(&mut scratch.special),
            std::mem::take(&mut scratch.stops),
        );
        if json {
            simd::body_masks(input, &mut special, &mut stops);
        }
        let mut scan = Scan {
            r: self,
            body: input,
            text,
            app: req.app,
            overrides: req.overrides,
            app_key: None,
            findings: Vec::new(),
            repl: std::mem::take(&mut scratch.repl),
            blocked: None,
            norm: std::mem::take(&mut scratch.norm),
            hits: std::mem::take(&mut scratch.hits),
            win: std::mem::take(&mut scratch.win),
            body_stops: json.then_some(&stops[..]),
            seam: Seam::default(),
            reorder: false,
            order: std::mem::take(&mut scratch.order),
            sorted: std::mem::take(&mut scratch.sorted),
        };
        let walked = if json {
            json::walk_with(input, &special, &mut scan).map_err(|e| match e {
                json::JsonError::Syntax(m) => Refusal::BadJson(m),
                json::JsonError::Duplicate(m) => Refusal::DuplicateKey(m),
            })
        } else {
            scan.text_body();
            Ok(())
        };
        let Scan {
            mut findings,
            mut repl,
            blocked,
            norm,
            hits,
            win,
            reorder,
            order,
            sorted,
            ..
        } = scan;
        if reorder {
            findings.sort_by_key(|f| f.start);
        }
        let body = if walked.is_err() || blocked.is_some() || repl.is_empty() {
            None
        } else {
            // in body order already unless a seam was crossed
            if !repl.is_sorted_by_key(|r| r.0) {
                repl.sort_by_key(|r| r.0);
            }
            let mut out = Vec::with_capacity(input.len() + repl.len() * 16);
            let mut at = 0;
            for &(s, e, ref tok) in &repl {
                // a span across a seam may overlap one found in its part:
                // what is already replaced is not written twice
                if e <= at {
                    continue;
                }
                out.extend_from_slice(input.get(at..s).unwrap_or_default());
                tok.write(&self.meta, &mut out);
                at = e;
            }
            out.extend_from_slice(input.get(at..).unwrap_or_default());
            Some(out)
        };
        // keep the buffers for this thread's next request, unless a large
        // body grew them (they would hold that memory for good)
        if input.len() <= SCRATCH_KEEP {
            (scratch.norm, scratch.hits, scratch.win, scratch.repl) = (norm, hits, win, repl);
            (scratch.special, scratch.stops) = (special, stops);
            (scratch.order, scratch.sorted) = (order, sorted);
            SCRATCH.with(|c| c.set(Some(scratch)));
        }
        walked?;
        Ok(Outcome {
            decompressed: body.is_some() && decoded.is_some(),
            body,
            findings,
            blocked,
        })
    }

    /// Run every detector over normalised `text`; candidate hits go to `hits`
    /// with spans in `text`.
    fn scan_text(&self, text: &str, win: &mut Windows, hits: &mut Vec<Hit>) {
        // the dictionaries search a lowercased copy, made with the masks
        let dict = self
            .dict
            .as_ref()
            .filter(|d| text.len() >= d.longest.min_pattern_len());
        trigger::find(text, self.min_digits, dict.is_some(), win);
        let mut lit_at = std::mem::take(&mut win.lit_at);
        for c in &self.classes {
            if c.class == Class::Always {
                for &i in &c.rules {
                    if self.rules.get(i).is_some_and(|r| text.len() >= r.min_len) {
                        self.run_rule(i, text, (0, text.len()), win.digit_mask(), hits);
                    }
                }
                continue;
            }
            if c.class == Class::Digits {
                for (&(ws, we), &sh) in win.digits.iter().zip(&win.digit_shapes) {
                    if let Some(t) = &c.by_shape {
                        let mut want = 0u64;
                        let mut bits = sh;
                        while bits != 0 {
                            want |= t[bits.trailing_zeros() as usize & 15];
                            bits &= bits - 1;
                        }
                        // The digits of a valid IBAN are the IBAN's: the
                        // other digit rules run only on the text around it.
                        // (Its digit groups also look like a card or a
                        // national phone; trying them cost ~40 % of an
                        // IBAN-dense body.)
                        let iban = want & c.iban_bit;
                        let (first, mut from) = (hits.len(), ws);
                        if iban != 0 && want != iban {
                            if let Some(&i) = c.rules.get(iban.trailing_zeros() as usize) {
                                self.run_rule(i, text, (ws, we), win.digit_mask(), hits);
                            }
                            want &= !iban;
                        }
                        let found = hits.len();
                        for k in first..=found {
                            // the stretch before the k-th IBAN, then the rest
                            let (to, after) = match hits.get(k).filter(|_| k < found) {
                                Some(h) => (h.s, h.e),
                                None => (we, we),
                            };
                            let mut run = want;
                            // a digit rule needs digits: most stretches
                            // around an IBAN are prose
                            if simd::next_set(win.digit_mask(), from).is_none_or(|d| d >= to) {
                                run = 0;
                            }
                            while run != 0 {
                                let j = run.trailing_zeros() as usize;
                                run &= run - 1;
                                if let Some(&i) = c.rules.get(j) {
                                    self.run_rule(i, text, (from, to), win.digit_mask(), hits);
                                }
                            }
                            from = after;
                        }
                        continue;
                    }
                    for &i in &c.rules {
                        if self.rules.get(i).is_some_and(|r| r.need & sh != 0) {
                            self.run_rule(i, text, (ws, we), win.digit_mask(), hits);
                        }
                    }
                }
                continue;
            }
            for &(ws, we) in win.get(c.class) {
                let Some(window) = text.get(ws..we) else {
                    continue;
                };
                if let Some(lits) = &c.lits {
                    let mut want = lits.rules_in(window.as_bytes(), &mut lit_at);
                    while want != 0 {
                        let k = want.trailing_zeros() as usize;
                        want &= want - 1;
                        let Some(&i) = c.rules.get(k) else {
                            continue;
                        };
                        // a matcher whose matches start at the literals: try
                        // only there rather than at every byte of the window
                        match self
                            .rules
                            .get(i)
                            .and_then(|r| r.fast)
                            .filter(|f| f.starts_at_literals())
                        {
                            Some(f) => {
                                let at = lit_at.iter().filter(|x| x.1 == k).map(|x| x.0);
                                self.run_at(i, f, text, (ws, we), at, hits);
                            }
                            None => self.run_rule(i, text, (ws, we), win.digit_mask(), hits),
                        }
                    }
                    continue;
                }
                match &c.set {
                    Some(set) => {
                        for k in set.matches(window).iter() {
                            if let Some(&i) = c.rules.get(k) {
                                self.run_rule(i, text, (ws, we), win.digit_mask(), hits);
                            }
                        }
                    }
                    None => {
                        for &i in &c.rules {
                            self.run_rule(i, text, (ws, we), win.digit_mask(), hits);
                        }
                    }
                }
            }
        }
        win.lit_at = lit_at;
        if let Some(d) = dict {
            let lower = &win.lower;
            let mut push = |s: usize, e: usize, pattern: usize| {
                if word_edge(text, s, true) && word_edge(text, e, false) {
                    if let Some(&mi) = self.dict_meta.get(pattern) {
                        hits.push(Hit {
                            s,
                            e,
                            meta: mi,
                            action: Action::Mask,
                        });
                    }
                }
            };
            for m in d.longest.find_iter(&lower[..]) {
                let (s, e) = (m.start(), m.end());
                if word_edge(text, s, true) && word_edge(text, e, false) {
                    push(s, e, m.pattern().as_usize());
                    continue;
                }
                // not a whole word: every term overlapping it, whole words kept
                let lo = s;
                let hi = (e + d.max_len).min(lower.len());
                for m in d.all.find_overlapping_iter(&lower[lo..hi]) {
                    push(lo + m.start(), lo + m.end(), m.pattern().as_usize());
                }
            }
        }
    }

    /// Run rule `i` over `text[ws..we]`, validating against the whole text.
    fn run_rule(
        &self,
        i: usize,
        text: &str,
        (ws, we): (usize, usize),
        digits: &[u64],
        hits: &mut Vec<Hit>,
    ) {
        let (Some(rule), Some(window)) = (self.rules.get(i), text.get(ws..we)) else {
            return;
        };
        match rule.group {
            Some(g) => {
                for c in rule.re.captures_iter(window) {
                    if let Some(m) = c.get(g).or_else(|| c.get(0)) {
                        if let Some((s, e)) =
                            detectors::validate(rule.validator, text, ws + m.start(), ws + m.end())
                        {
                            hits.push(Hit {
                                s,
                                e,
                                meta: i,
                                action: Action::Mask,
                            });
                        }
                    }
                }
            }
            None => {
                let mut at = 0usize;
                while at <= window.len() {
                    let found = match rule.fast {
                        Some(f) => f.find_at(window.as_bytes(), at, Some((digits, ws))),
                        None => rule.re.find_at(window, at).map(|m| (m.start(), m.end())),
                    };
                    let Some(m) = found else {
                        break;
                    };
                    let mut next = Self::keep(i, rule, text, ws, m, hits);
                    while next < window.len() && !window.is_char_boundary(next) {
                        next += 1;
                    }
                    at = next;
                }
            }
        }
    }

    /// Validate match `ms..me` (in the window at `ws`) of rule `i`, keep
    /// what the validator keeps, and return where to search on: right after
    /// what it kept, as a validator may narrow a match (a card inside a
    /// longer run of digit groups, an IBAN followed by another), and past
    /// `ms` in any case.
    fn keep(
        i: usize,
        rule: &Rule,
        text: &str,
        ws: usize,
        (ms, me): (usize, usize),
        hits: &mut Vec<Hit>,
    ) -> usize {
        let mut next = me;
        if ms < me {
            if let Some((s, e)) = detectors::validate(rule.validator, text, ws + ms, ws + me) {
                hits.push(Hit {
                    s,
                    e,
                    meta: i,
                    action: Action::Mask,
                });
                if e - ws < me {
                    next = e - ws;
                }
            }
        }
        next.max(ms + 1)
    }

    /// [`Redactor::run_rule`] for a matcher whose matches all start at its
    /// rule's literals: `starts` are the positions (in the window, rising)
    /// where [`LitFilter`] found them, at word starts. The leftmost match
    /// from any point is the first of those where the matcher matches, so
    /// this finds what the whole-window search finds.
    fn run_at(
        &self,
        i: usize,
        f: confirm::Matcher,
        text: &str,
        (ws, we): (usize, usize),
        starts: impl Iterator<Item = usize>,
        hits: &mut Vec<Hit>,
    ) {
        let (Some(rule), Some(window)) = (self.rules.get(i), text.get(ws..we)) else {
            return;
        };
        let mut at = 0usize;
        for ms in starts {
            if ms < at {
                continue;
            }
            let Some(me) = f.match_at(window.as_bytes(), ms) else {
                continue;
            };
            // `at` is only compared with the literal positions
            at = Self::keep(i, rule, text, ws, (ms, me), hits);
        }
    }
}

/// Buffers a scan fills and empties (normalised text, masks, windows,
/// candidate hits, replacements), kept per thread between requests: grown
/// from empty on every request they cost a dozen reallocations each time.
#[derive(Default)]
struct Scratch {
    norm: Norm,
    hits: Vec<Hit>,
    win: Windows,
    repl: Vec<(usize, usize, Token)>,
    /// The body's special-byte and normalisation-stop masks.
    special: Vec<u64>,
    stops: Vec<u64>,
    /// [`Scan::resolve`]'s sort keys and copy of the hits.
    order: Vec<u64>,
    sorted: Vec<Hit>,
}

/// Largest body whose buffers are kept for the next request (bigger ones
/// are rare; their buffers are freed).
const SCRATCH_KEEP: usize = 1 << 20;

thread_local! {
    static SCRATCH: Cell<Option<Box<Scratch>>> = const { Cell::new(None) };
}

/// Literals one of which every match of a built-in token rule has at a word
/// start (`\b` before it, or `://` for the webhook), and whether the rule
/// ignores ASCII case.
fn rule_literals(rule: &str) -> Option<(&'static [&'static str], bool)> {
    Some(match rule {
        "jwt" => (&["eyJ"], false),
        "aws_key.access_key_id" => (
            &[
                "AKIA", "ASIA", "ABIA", "ACCA", "AGPA", "AIDA", "AIPA", "ANPA", "ANVA", "AROA",
                "APKA", "ASCA",
            ],
            false,
        ),
        "github.token" => (
            &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
            false,
        ),
        "gitlab.token" => (
            &["glpat-", "gldt-", "glrt-", "glptt-", "glft-", "glsoat-"],
            false,
        ),
        "slack.token" => (&["xox"], false),
        "slack.webhook" => (&["hooks.slack.com/"], false),
        "stripe.key" => (
            &["sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"],
            false,
        ),
        "google_api_key" => (&["AIza"], false),
        "anthropic_key" => (&["sk-ant-"], false),
        "openai_key" => (&["sk-"], false),
        "bearer.token" => (&["bearer"], true),
        _ => return None,
    })
}

/// Which rules of a class to run in a window, from the literals they start
/// with: every match of a token rule begins, at a word start, with one of
/// its literals, so only word starts are looked at (a first-byte table,
/// then a short compare). Cheaper than an automaton over windows this small.
struct LitFilter {
    /// Per byte: the rules (bit = index in the class's `rules`) one of
    /// whose literals starts with it (either case for a rule that ignores
    /// case).
    first: Box<[u64; 256]>,
    /// Per rule of the class: its literals.
    lits: Vec<Vec<Lit>>,
}

/// One literal, its first 8 bytes as a word to compare in one step (a
/// slice compare here was a `memcmp` call per word start).
struct Lit {
    /// The first (up to) 8 bytes, little-endian, lowercase when `fold`.
    head: u64,
    /// Which bytes of `head` are the literal's.
    mask: u64,
    /// Bits ORed into the text's word first: 0x20 on the literal's letters
    /// when the rule ignores ASCII case.
    fold: u64,
    /// The bytes after the first 8.
    tail: &'static [u8],
    any_case: bool,
    text: &'static [u8],
}

impl Lit {
    fn new(text: &'static str, any_case: bool) -> Lit {
        let b = text.as_bytes();
        let (mut head, mut mask, mut fold) = (0u64, 0u64, 0u64);
        for (k, &c) in b.iter().take(8).enumerate() {
            let c = if any_case { c.to_ascii_lowercase() } else { c };
            head |= u64::from(c) << (8 * k);
            mask |= 0xFF << (8 * k);
            if any_case && c.is_ascii_alphabetic() {
                fold |= 0x20 << (8 * k);
            }
        }
        Lit {
            head,
            mask,
            fold,
            tail: b.get(8..).unwrap_or_default(),
            any_case,
            text: b,
        }
    }

    /// Whether `rest` starts with the literal.
    #[inline]
    fn starts(&self, rest: &[u8]) -> bool {
        match rest.get(..8) {
            Some(w) => {
                let x = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
                (x | self.fold) & self.mask == self.head
                    && (self.tail.is_empty() || rest.get(8..8 + self.tail.len()) == Some(self.tail))
            }
            // fewer than 8 bytes left in the window
            None => match rest.get(..self.text.len()) {
                Some(r) if self.any_case => r.eq_ignore_ascii_case(self.text),
                Some(r) => r == self.text,
                None => false,
            },
        }
    }
}

impl LitFilter {
    /// The prefilter of a class, if every one of its (at most 64) rules has literals.
    fn new(rules: &[usize], meta: &[Meta]) -> Option<LitFilter> {
        if rules.len() > 64 {
            return None;
        }
        let mut first = Box::new([0u64; 256]);
        let mut lits = Vec::new();
        for (k, &i) in rules.iter().enumerate() {
            let (l, any_case) = rule_literals(meta.get(i)?.name)?;
            for x in l {
                let c = *x.as_bytes().first()?;
                first[usize::from(c)] |= 1 << k;
                if any_case {
                    first[usize::from(c.to_ascii_lowercase())] |= 1 << k;
                    first[usize::from(c.to_ascii_uppercase())] |= 1 << k;
                }
            }
            lits.push(l.iter().map(|x| Lit::new(x, any_case)).collect());
        }
        Some(LitFilter { first, lits })
    }

    /// The rules one of whose literals starts a word of `w` (the window's
    /// start counts as a word start, as for the regex); `at` gets each
    /// (position, rule) found, by position.
    fn rules_in(&self, w: &[u8], at: &mut Vec<(usize, usize)>) -> u64 {
        let mut want = 0u64;
        at.clear();
        // no branch per byte on whether the byte before is a word byte:
        // on prose that branch mispredicted about once a word
        let mut after_word = false;
        for (p, &c) in w.iter().enumerate() {
            let mut cand = self.first[usize::from(c)] & u64::from(after_word).wrapping_sub(1);
            after_word = confirm::word(c);
            if cand == 0 {
                continue;
            }
            let rest = &w[p..];
            while cand != 0 {
                let k = cand.trailing_zeros() as usize;
                cand &= cand - 1;
                if self
                    .lits
                    .get(k)
                    .is_some_and(|l| l.iter().any(|x| x.starts(rest)))
                {
                    want |= 1 << k;
                    at.push((p, k));
                }
            }
        }
        want
    }
}

/// The fewest bytes a match of pattern `p` can have (0 when unknown).
fn min_match_len(p: &str) -> usize {
    regex_syntax::parse(p)
        .ok()
        .and_then(|h| h.properties().minimum_len())
        .unwrap_or(0)
}

fn compile(p: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(p)
        .size_limit(1 << 22)
        .dfa_size_limit(1 << 22)
        .build()
}

/// Whether `i` is a word boundary in `text` (ASCII and Unicode alphanumerics count as word).
fn word_edge(text: &str, i: usize, start: bool) -> bool {
    let c = if start {
        text.get(..i).and_then(|t| t.chars().next_back())
    } else {
        text.get(i..).and_then(|t| t.chars().next())
    };
    !c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// JSON when the type says so, or with no type when the body starts like JSON.
fn is_json(ct: Option<&str>, body: &[u8]) -> bool {
    match ct {
        Some(ct) => {
            let media = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media.ends_with("/json") || media.ends_with("+json")
        }
        None => body
            .iter()
            .find(|c| !c.is_ascii_whitespace())
            .is_some_and(|&c| c == b'{' || c == b'['),
    }
}

/// JSON object keys whose string value is a credential in itself.
fn secret_key_name(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    let k = k.trim_start_matches(['x', '-', '_']).replace('-', "_");
    matches!(
        k.as_str(),
        "password"
            | "passwd"
            | "passphrase"
            | "pwd"
            | "secret"
            | "client_secret"
            | "secret_key"
            | "api_key"
            | "apikey"
            | "access_token"
            | "auth_token"
            | "refresh_token"
            | "private_key"
            | "token"
            | "authorization"
            | "aws_secret_access_key"
            | "db_password"
    ) || k.ends_with("_password")
        || k.ends_with("_secret")
}

/// Compiled dictionary terms (ASCII-lowercased).
struct Dict {
    longest: AhoCorasick,
    all: AhoCorasick,
    max_len: usize,
}

/// What replaces a span: written straight into the output body, so a
/// finding costs no string of its own.
#[derive(Debug, Clone, Copy)]
enum Token {
    /// `[REDACTED:TYPE]` (index into `meta`).
    Mask(usize),
    /// `[TYPE:xxxxxxxx]`, the first 4 bytes of the keyed hash in hex.
    Hash(usize, [u8; 4]),
}

impl Token {
    fn write(&self, meta: &[Meta], out: &mut Vec<u8>) {
        let kind = |i: usize| meta.get(i).map_or("", |m| m.kind).as_bytes();
        match *self {
            Token::Mask(i) => {
                out.extend_from_slice(b"[REDACTED:");
                out.extend_from_slice(kind(i));
                out.push(b']');
            }
            Token::Hash(i, tag) => {
                out.push(b'[');
                out.extend_from_slice(kind(i));
                out.push(b':');
                let mut hex = [0u8; 8];
                for (k, x) in tag.iter().enumerate() {
                    hex[2 * k] = b"0123456789abcdef"[usize::from(x >> 4)];
                    hex[2 * k + 1] = b"0123456789abcdef"[usize::from(x & 15)];
                }
                out.extend_from_slice(&hex);
                out.push(b']');
            }
        }
    }
}

/// A confirmed candidate, span in the normalised text.
#[derive(Debug, Clone, Copy)]
struct Hit {
    s: usize,
    e: usize,
    meta: usize,
    action: Action,
}

/// Per-request scanning state (the JSON walker's visitor).
struct Scan<'r, 'b> {
    r: &'r Redactor,
    body: &'b [u8],
    /// `body` as text (validated once).
    text: &'b str,
    app: &'b str,
    overrides: Option<&'b HashMap<String, Action>>,
    app_key: Option<[u8; 32]>,
    findings: Vec<Finding>,
    repl: Vec<(usize, usize, Token)>,
    blocked: Option<String>,
    norm: Norm,
    hits: Vec<Hit>,
    win: Windows,
    /// The normalisation stops of the whole body, when it is JSON.
    body_stops: Option<&'b [u64]>,
    /// The text parts before this one, for the scan across their seam.
    seam: Seam,
    /// A finding across a seam was recorded after the part it starts in:
    /// the findings need sorting back into body order.
    reorder: bool,
    /// [`Scan::resolve`]'s sort keys and copy of the hits (reused buffers).
    order: Vec<u64>,
    sorted: Vec<Hit>,
}

impl Scan<'_, '_> {
    fn text_body(&mut self) {
        let len = self.body.len();
        self.leaf(0, len, false, false, &[]);
    }

    /// Base64 media (images, audio, PDFs as data URLs or `source.data`) is
    /// not prompt text: skipping it avoids both cost and false positives.
    fn is_media(&self, raw: &[u8], path: &[Seg]) -> bool {
        if raw.len() < 256 {
            return false;
        }
        let b64 = |x: &[u8]| {
            x.iter().all(|&c| {
                c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'\\' | b'-' | b'_')
            })
        };
        if raw.starts_with(b"data:") {
            if let Some(comma) = raw.iter().take(128).position(|&c| c == b',') {
                let head = &raw[..comma];
                return head.ends_with(b";base64") && b64(&raw[comma + 1..]);
            }
            return false;
        }
        let key_is_data = matches!(path.last(), Some(Seg::Key { start, end, .. })
            if self.body.get(*start..*end) == Some(b"data".as_slice()));
        key_is_data && b64(raw)
    }

    /// Scan one string (`start..end` raw content) and record its findings.
    fn leaf(&mut self, start: usize, end: usize, json: bool, is_key: bool, path: &[Seg]) -> bool {
        let body = self.body;
        let Some(raw) = body.get(start..end) else {
            return false;
        };
        if !is_key && json && self.is_media(raw, path) {
            return false;
        }
        let mut norm = std::mem::take(&mut self.norm);
        let mut hits = std::mem::take(&mut self.hits);
        hits.clear();
        let raw_text = self.text.get(start..end).unwrap_or_default();
        let fast =
            !normalize::normalize_if_needed(raw_text, start, json, self.body_stops, &mut norm);
        let text: &str = if fast { raw_text } else { &norm.text };
        self.r.scan_text(text, &mut self.win, &mut hits);
        if let (Some((mi, floor)), false, true) = (self.r.secret_key, is_key, json) {
            if let Some(Seg::Key {
                start: ks,
                end: ke,
                escaped,
                ..
            }) = path.last()
            {
                let kraw = body.get(*ks..*ke).unwrap_or_default();
                let kname = || {
                    if *escaped {
                        Cow::Owned(json::decode_string(kraw))
                    } else {
                        String::from_utf8_lossy(kraw)
                    }
                };
                let t = text.trim();
                // the value's shape first: most values are prose
                if (8..=512).contains(&t.len())
                    && !t.contains(char::is_whitespace)
                    && !t.starts_with('[')
                    && secret_key_name(&kname())
                    && detectors::validate(Validator::Entropy(floor), t, 0, t.len()).is_some()
                {
                    let off = text.len() - text.trim_start().len();
                    hits.push(Hit {
                        s: off,
                        e: off + t.len(),
                        meta: mi,
                        action: Action::Mask,
                    });
                }
            }
        }
        let found = !hits.is_empty();
        if found {
            self.record(text, &norm, fast, start, &mut hits, is_key, path);
        }
        let norm = match text_part(body, path) {
            Some((array, k)) if json && !is_key => {
                self.seam(array, k, (start, raw_text, fast), norm, &hits, path)
            }
            _ => norm,
        };
        self.norm = norm;
        self.hits = hits;
        found
    }

    #[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
    fn record(
        &mut self,
        text: &str,
        norm: &Norm,
        fast: bool,
        start: usize,
        hits: &mut [Hit],
        is_key: bool,
        path: &[Seg],
    ) {
        let n = self.resolve(hits);
        let kept = &hits[..n];
        self.findings.reserve(kept.len());
        self.repl.reserve(kept.len());
        let mut p = json::render_path(self.body, path);
        if is_key {
            p.push_str("{key}");
        }
        let p: Arc<str> = p.into();
        let mut cur = 0;
        for h in kept {
            let span = if fast {
                (start + h.s, start + h.e)
            } else {
                norm.raw_span_from(h.s, h.e, &mut cur)
            };
            let value = text.get(h.s..h.e).unwrap_or_default();
            self.emit(h, &[span], value, is_key, p.clone());
        }
    }

    /// Set each hit's action (policy overrides first), then resolve overlaps
    /// in one sweep by start: of two overlapping hits keep the enforcing
    /// one, then the longer, then the earlier rule. The kept hits are moved
    /// to the front of `hits`; returns how many there are.
    fn resolve(&mut self, hits: &mut [Hit]) -> usize {
        for h in hits.iter_mut() {
            let Some(m) = self.r.meta.get(h.meta) else {
                continue;
            };
            h.action = self
                .overrides
                .and_then(|o| o.get(m.kind).copied())
                .unwrap_or(m.action);
        }
        let better = |a: &Hit, b: &Hit| {
            (a.action.rank(), a.e - a.s, std::cmp::Reverse(a.meta))
                > (b.action.rank(), b.e - b.s, std::cmp::Reverse(b.meta))
        };
        // Hits of one rule at one start differ only in their end, and the
        // sweep keeps the longest whichever comes first: the end needs no
        // place in the order. Ordered by one integer each (start, rule,
        // index), then gathered: sorting the 32-byte hits by a computed key
        // cost ~150 instructions a hit.
        let fits = hits.len() <= 1 << 12
            && self.r.meta.len() <= 1 << 20
            && hits.iter().all(|h| (h.s as u64) < 1 << 32);
        if fits {
            let mut order = std::mem::take(&mut self.order);
            order.clear();
            order.extend(
                hits.iter()
                    .enumerate()
                    .map(|(k, h)| ((h.s as u64) << 32) | ((h.meta as u64) << 12) | k as u64),
            );
            order.sort_unstable();
            let mut sorted = std::mem::take(&mut self.sorted);
            sorted.clear();
            sorted.extend(
                order
                    .iter()
                    .filter_map(|&x| hits.get((x & 0xFFF) as usize).copied()),
            );
            for (h, s) in hits.iter_mut().zip(&sorted) {
                *h = *s;
            }
            (self.order, self.sorted) = (order, sorted);
        } else {
            hits.sort_unstable_by_key(|h| (h.s, h.meta, h.e));
        }
        // kept hits are compacted to the front of `hits`
        let mut n = 0usize;
        for k in 0..hits.len() {
            let h = hits[k];
            match n.checked_sub(1).map(|l| hits[l]) {
                Some(last) if h.s < last.e => {
                    if better(&h, &last) {
                        hits[n - 1] = h;
                    }
                }
                _ => {
                    hits[n] = h;
                    n += 1;
                }
            }
        }
        n
    }

    /// Record one kept hit: a finding spanning `spans` (the body spans of
    /// the match, one per string it lies in), and what its action does
    /// to them. `value` is the matched (normalised) text.
    fn emit(
        &mut self,
        h: &Hit,
        spans: &[(usize, usize)],
        value: &str,
        in_key: bool,
        path: Arc<str>,
    ) {
        let (Some(m), Some(first), Some(last)) =
            (self.r.meta.get(h.meta), spans.first(), spans.last())
        else {
            return;
        };
        if h.action == Action::Block && self.blocked.is_none() {
            self.blocked = Some(format!("{} found by rule {} at {}", m.kind, m.name, path));
        }
        // `path` moves in: a clone and a drop are two atomic operations
        self.findings.push(Finding {
            kind: Cow::Borrowed(m.kind),
            rule: Cow::Borrowed(m.name),
            action: h.action,
            path,
            in_key,
            start: first.0,
            end: last.1,
        });
        let token = match h.action {
            Action::Block | Action::Monitor => return,
            Action::Mask => Token::Mask(h.meta),
            Action::Hash => {
                let (r, app) = (self.r, self.app);
                let key = *self.app_key.get_or_insert_with(|| {
                    hmac(&r.hash_key, &[b"airlock/redact/app/", app.as_bytes()])
                });
                let mac = hmac(&key, &[m.kind.as_bytes(), b"\0", value.as_bytes()]);
                let mut tag = [0u8; 4];
                tag.copy_from_slice(&mac[..4]);
                Token::Hash(h.meta, tag)
            }
        };
        for &(a, b) in spans {
            self.repl.push((a, b, token));
        }
    }
}

impl json::Visitor for Scan<'_, '_> {
    fn string(
        &mut self,
        start: usize,
        end: usize,
        _escaped: bool,
        is_key: bool,
        path: &[Seg],
    ) -> bool {
        self.leaf(start, end, true, is_key, path)
    }
}

#[cfg(test)]
mod tests;
