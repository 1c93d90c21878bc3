//! Loading `redaction.yaml`: every problem is collected (not just the
//! first), each naming the file, the line when it can be found, the key and
//! the bad value, so one edit-reload cycle shows them all.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_yaml::Value;
use thiserror::Error;

use super::detectors::{Validator, DETECTORS};
use super::Action;

/// Where in the configuration a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    /// The file that holds the problem.
    pub file: PathBuf,
    /// 1-based line, when it could be found.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `rules[2].pattern`.
    pub key: String,
}

impl fmt::Display for ConfigLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}", self.file.display(), l, self.key),
            None => write!(f, "{}: {}", self.file.display(), self.key),
        }
    }
}

/// One problem in the redaction configuration.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum RedactConfigError {
    /// A file could not be read.
    #[error("{at}: cannot read {value:?}: {reason}")]
    Io {
        /// Where.
        at: ConfigLocation,
        /// The path that could not be read.
        value: String,
        /// The OS error.
        reason: String,
    },
    /// The file is not valid YAML.
    #[error("{at}: invalid yaml: {reason}")]
    Syntax {
        /// Where.
        at: ConfigLocation,
        /// The parser's message.
        reason: String,
    },
    /// A key that the schema does not have (a misspelling must not vanish).
    #[error("{at}: unknown key {value:?} (allowed: {allowed})")]
    UnknownKey {
        /// Where.
        at: ConfigLocation,
        /// The unknown key.
        value: String,
        /// The keys allowed there.
        allowed: String,
    },
    /// A detector id that does not exist.
    #[error("{at}: unknown detector {value:?} (known: {known})")]
    UnknownDetector {
        /// Where.
        at: ConfigLocation,
        /// The unknown id.
        value: String,
        /// The known ids.
        known: String,
    },
    /// An action other than mask, hash, block, monitor.
    #[error("{at}: unknown action {value:?} (use mask, hash, block or monitor)")]
    UnknownAction {
        /// Where.
        at: ConfigLocation,
        /// The bad action.
        value: String,
    },
    /// A custom rule's pattern does not compile.
    #[error("{at}: invalid regex {value:?}: {reason}")]
    InvalidRegex {
        /// Where.
        at: ConfigLocation,
        /// The pattern.
        value: String,
        /// The regex compiler's message.
        reason: String,
    },
    /// A dictionary file named by the config does not exist or is unreadable.
    #[error("{at}: dictionary file {value:?} cannot be read: {reason}")]
    MissingDictionary {
        /// Where.
        at: ConfigLocation,
        /// The path as written (relative to the config's directory).
        value: String,
        /// The OS error.
        reason: String,
    },
    /// Any other bad value (wrong type, bad type name, duplicate rule name …).
    #[error("{at}: invalid value {value:?}: {reason}")]
    InvalidValue {
        /// Where.
        at: ConfigLocation,
        /// The bad value.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

impl RedactConfigError {
    /// The location of the problem.
    pub fn location(&self) -> &ConfigLocation {
        match self {
            Self::Io { at, .. }
            | Self::Syntax { at, .. }
            | Self::UnknownKey { at, .. }
            | Self::UnknownDetector { at, .. }
            | Self::UnknownAction { at, .. }
            | Self::InvalidRegex { at, .. }
            | Self::MissingDictionary { at, .. }
            | Self::InvalidValue { at, .. } => at,
        }
    }
}

/// Detector settings from the file.
#[derive(Debug, Clone)]
pub(crate) struct DetectorCfg {
    pub id: String,
    pub enabled: Option<bool>,
    pub action: Option<Action>,
    pub min_entropy: Option<f64>,
}

/// A dictionary from the file, with its terms read.
#[derive(Debug, Clone)]
pub(crate) struct DictCfg {
    pub name: String,
    pub kind: String,
    pub action: Action,
    pub terms: Vec<String>,
}

/// A custom regex rule from the file, compiled.
#[derive(Debug, Clone)]
pub(crate) struct RuleCfg {
    pub name: String,
    pub kind: String,
    pub pattern: String,
    pub action: Action,
    pub validator: Validator,
}

/// The whole file, validated.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileCfg {
    pub hash_key: Option<Vec<u8>>,
    pub default_action: Option<Action>,
    pub detectors: Vec<DetectorCfg>,
    pub dictionaries: Vec<DictCfg>,
    pub rules: Vec<RuleCfg>,
}

struct Ctx<'a> {
    file: &'a Path,
    dir: &'a Path,
    src: &'a str,
    errors: Vec<RedactConfigError>,
}

impl Ctx<'_> {
    fn at(&self, key: &str, leaf: &str, value: &str) -> ConfigLocation {
        ConfigLocation {
            file: self.file.to_path_buf(),
            line: find_line(self.src, leaf, value),
            key: key.to_string(),
        }
    }

    fn check_keys(&mut self, map: &serde_yaml::Mapping, path: &str, allowed: &[&str]) {
        for k in map.keys() {
            let name = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
            if !allowed.contains(&name.as_str()) {
                let key = join(path, &name);
                let at = self.at(&key, &name, "");
                self.errors.push(RedactConfigError::UnknownKey {
                    at,
                    value: name,
                    allowed: allowed.join(", "),
                });
            }
        }
    }

    fn bad(&mut self, key: &str, leaf: &str, value: &str, reason: &str) {
        let at = self.at(key, leaf, value);
        self.errors.push(RedactConfigError::InvalidValue {
            at,
            value: value.to_string(),
            reason: reason.to_string(),
        });
    }

    fn string(
        &mut self,
        map: &serde_yaml::Mapping,
        path: &str,
        leaf: &str,
        required: bool,
    ) -> Option<String> {
        match map.get(leaf) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                let v = scalar(other);
                self.bad(&join(path, leaf), leaf, &v, "expected a string");
                None
            }
            None => {
                if required {
                    let at = ConfigLocation {
                        file: self.file.to_path_buf(),
                        line: None,
                        key: join(path, leaf),
                    };
                    self.errors.push(RedactConfigError::InvalidValue {
                        at,
                        value: String::new(),
                        reason: "required key is missing".into(),
                    });
                }
                None
            }
        }
    }

    fn action(&mut self, map: &serde_yaml::Mapping, path: &str) -> Option<Action> {
        let s = self.string(map, path, "action", false)?;
        match Action::parse(&s) {
            Some(a) => Some(a),
            None => {
                let at = self.at(&join(path, "action"), "action", &s);
                self.errors
                    .push(RedactConfigError::UnknownAction { at, value: s });
                None
            }
        }
    }

    fn kind(&mut self, map: &serde_yaml::Mapping, path: &str) -> Option<String> {
        let s = self.string(map, path, "type", true)?;
        if s.is_empty()
            || !s
                .bytes()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
        {
            self.bad(
                &join(path, "type"),
                "type",
                &s,
                "a type is UPPER_SNAKE_CASE ([A-Z0-9_]+)",
            );
            return None;
        }
        Some(s)
    }

    fn enabled(&mut self, map: &serde_yaml::Mapping, path: &str) -> Option<bool> {
        match map.get("enabled") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                let v = scalar(other);
                self.bad(
                    &join(path, "enabled"),
                    "enabled",
                    &v,
                    "expected true or false",
                );
                None
            }
        }
    }
}

fn join(path: &str, leaf: &str) -> String {
    if path.is_empty() {
        leaf.to_string()
    } else {
        format!("{path}.{leaf}")
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::Null => "null".into(),
        _ => serde_yaml::to_string(v)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// Best-effort line of `leaf: value` in the source: first a line with both,
/// then one with the value, then one with the key.
fn find_line(src: &str, leaf: &str, value: &str) -> Option<usize> {
    let key = format!("{leaf}:");
    let lines: Vec<&str> = src.lines().collect();
    let has_key = |l: &str| {
        let t = l.trim_start().trim_start_matches("- ").trim_start();
        t.starts_with(&key) || t.starts_with(&format!("\"{leaf}\":"))
    };
    if !value.is_empty() {
        if let Some(i) = lines.iter().position(|l| has_key(l) && l.contains(value)) {
            return Some(i + 1);
        }
        if let Some(i) = lines.iter().position(|l| l.contains(value)) {
            return Some(i + 1);
        }
    }
    lines.iter().position(|l| has_key(l)).map(|i| i + 1)
}

const TOP_KEYS: &[&str] = &[
    "version",
    "hash_key",
    "hash_key_file",
    "default_action",
    "detectors",
    "dictionaries",
    "rules",
];
const DETECTOR_KEYS: &[&str] = &["enabled", "action", "min_entropy"];
const DICT_KEYS: &[&str] = &["name", "type", "file", "action", "enabled"];
const RULE_KEYS: &[&str] = &[
    "name",
    "type",
    "pattern",
    "action",
    "validator",
    "min_entropy",
    "enabled",
];

/// Read and validate the file; all problems or the parsed config.
pub(crate) fn load(path: &Path) -> Result<FileCfg, Vec<RedactConfigError>> {
    let here = |key: &str| ConfigLocation {
        file: path.to_path_buf(),
        line: None,
        key: key.to_string(),
    };
    let src = std::fs::read_to_string(path).map_err(|e| {
        vec![RedactConfigError::Io {
            at: here("(file)"),
            value: path.display().to_string(),
            reason: e.to_string(),
        }]
    })?;
    let root: Value = serde_yaml::from_str(&src).map_err(|e| {
        vec![RedactConfigError::Syntax {
            at: ConfigLocation {
                file: path.to_path_buf(),
                line: e.location().map(|l| l.line()),
                key: "(document)".into(),
            },
            reason: e.to_string(),
        }]
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut cx = Ctx {
        file: path,
        dir,
        src: &src,
        errors: Vec::new(),
    };
    let mut cfg = FileCfg::default();
    let empty = serde_yaml::Mapping::new();
    let top = match &root {
        Value::Mapping(m) => m,
        Value::Null => &empty,
        other => {
            let v = scalar(other);
            cx.bad("(document)", "", &v, "the file must be a mapping");
            return Err(cx.errors);
        }
    };
    cx.check_keys(top, "", TOP_KEYS);

    if let Some(v) = top.get("version") {
        if v.as_u64() != Some(1) {
            let s = scalar(v);
            cx.bad("version", "version", &s, "only version 1 is understood");
        }
    }
    if let Some(k) = cx.string(top, "", "hash_key", false) {
        if k.len() < 16 {
            cx.bad(
                "hash_key",
                "hash_key",
                "(hidden)",
                "a hash key needs at least 16 characters",
            );
        } else {
            cfg.hash_key = Some(k.into_bytes());
        }
    }
    if let Some(f) = cx.string(top, "", "hash_key_file", false) {
        match std::fs::read(cx.dir.join(&f)) {
            Ok(bytes) => {
                let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
                if trimmed.len() < 16 {
                    cx.bad(
                        "hash_key_file",
                        "hash_key_file",
                        &f,
                        "the key file needs at least 16 bytes",
                    );
                } else if cfg.hash_key.is_some() {
                    cx.bad(
                        "hash_key_file",
                        "hash_key_file",
                        &f,
                        "give hash_key or hash_key_file, not both",
                    );
                } else {
                    cfg.hash_key = Some(trimmed);
                }
            }
            Err(e) => {
                let at = cx.at("hash_key_file", "hash_key_file", &f);
                cx.errors.push(RedactConfigError::Io {
                    at,
                    value: f,
                    reason: e.to_string(),
                });
            }
        }
    }
    if top.contains_key("default_action") {
        let m: serde_yaml::Mapping = top
            .iter()
            .filter(|(k, _)| k.as_str() == Some("default_action"))
            .map(|(_, v)| (Value::String("action".into()), v.clone()))
            .collect();
        cfg.default_action = cx.action(&m, "");
    }

    match top.get("detectors") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let id = scalar(k);
                let path = format!("detectors.{id}");
                if !DETECTORS.contains(&id.as_str()) {
                    let at = cx.at(&path, &id, "");
                    cx.errors.push(RedactConfigError::UnknownDetector {
                        at,
                        value: id.clone(),
                        known: DETECTORS.join(", "),
                    });
                    continue;
                }
                let dm = match v {
                    Value::Mapping(dm) => dm.clone(),
                    Value::Bool(b) => {
                        let mut dm = serde_yaml::Mapping::new();
                        dm.insert("enabled".into(), Value::Bool(*b));
                        dm
                    }
                    other => {
                        let s = scalar(other);
                        cx.bad(
                            &path,
                            &id,
                            &s,
                            "expected a mapping (enabled, action, min_entropy) or true/false",
                        );
                        continue;
                    }
                };
                cx.check_keys(&dm, &path, DETECTOR_KEYS);
                let enabled = cx.enabled(&dm, &path);
                let action = cx.action(&dm, &path);
                let min_entropy = match dm.get("min_entropy") {
                    None => None,
                    Some(v) => match v.as_f64() {
                        Some(x) if (0.0..=8.0).contains(&x) => Some(x),
                        _ => {
                            let s = scalar(v);
                            cx.bad(
                                &join(&path, "min_entropy"),
                                "min_entropy",
                                &s,
                                "expected a number of bits per character, 0 to 8",
                            );
                            None
                        }
                    },
                };
                cfg.detectors.push(DetectorCfg {
                    id,
                    enabled,
                    action,
                    min_entropy,
                });
            }
        }
        Some(other) => {
            let s = scalar(other);
            cx.bad(
                "detectors",
                "detectors",
                &s,
                "expected a mapping of detector id to settings",
            );
        }
    }

    let mut names: Vec<String> = Vec::new();
    for (i, item) in seq(&mut cx, top, "dictionaries") {
        let path = format!("dictionaries[{i}]");
        cx.check_keys(&item, &path, DICT_KEYS);
        let name = cx.string(&item, &path, "name", true);
        let kind = cx.kind(&item, &path);
        let action = cx.action(&item, &path);
        let enabled = cx.enabled(&item, &path).unwrap_or(true);
        let file = cx.string(&item, &path, "file", true);
        let terms = file
            .as_ref()
            .and_then(|f| match std::fs::read_to_string(cx.dir.join(f)) {
                Ok(text) => Some(
                    text.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with('#'))
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                ),
                Err(e) => {
                    let at = cx.at(&join(&path, "file"), "file", f);
                    cx.errors.push(RedactConfigError::MissingDictionary {
                        at,
                        value: f.clone(),
                        reason: e.to_string(),
                    });
                    None
                }
            });
        if let Some(n) = &name {
            if names.contains(n) {
                cx.bad(
                    &join(&path, "name"),
                    "name",
                    n,
                    "names must be unique across dictionaries and rules",
                );
            }
            names.push(n.clone());
        }
        if let (Some(name), Some(kind), Some(terms), true) = (name, kind, terms, enabled) {
            cfg.dictionaries.push(DictCfg {
                name,
                kind,
                action: action.or(cfg.default_action).unwrap_or(Action::Mask),
                terms,
            });
        }
    }

    for (i, item) in seq(&mut cx, top, "rules") {
        let path = format!("rules[{i}]");
        cx.check_keys(&item, &path, RULE_KEYS);
        let name = cx.string(&item, &path, "name", true);
        let kind = cx.kind(&item, &path);
        let action = cx.action(&item, &path);
        let enabled = cx.enabled(&item, &path).unwrap_or(true);
        let pattern =
            cx.string(&item, &path, "pattern", true).and_then(
                |p| match regex::RegexBuilder::new(&p).size_limit(1 << 22).build() {
                    Ok(_) => Some(p),
                    Err(e) => {
                        let at = cx.at(&join(&path, "pattern"), "pattern", &p);
                        cx.errors.push(RedactConfigError::InvalidRegex {
                            at,
                            value: p,
                            reason: e
                                .to_string()
                                .lines()
                                .last()
                                .unwrap_or("")
                                .trim()
                                .to_string(),
                        });
                        None
                    }
                },
            );
        let min_entropy = item.get("min_entropy").and_then(Value::as_f64);
        let validator = match cx.string(&item, &path, "validator", false).as_deref() {
            None => Some(Validator::None),
            Some("luhn") => Some(Validator::Luhn),
            Some("mod97") => Some(Validator::Mod97),
            Some("isolated") => Some(Validator::Isolated),
            Some("entropy") => Some(Validator::Entropy(
                min_entropy.unwrap_or(super::detectors::DEFAULT_SECRET_ENTROPY),
            )),
            Some(other) => {
                cx.bad(
                    &join(&path, "validator"),
                    "validator",
                    other,
                    "known validators: luhn, mod97, isolated, entropy",
                );
                None
            }
        };
        if let Some(n) = &name {
            if names.contains(n) {
                cx.bad(
                    &join(&path, "name"),
                    "name",
                    n,
                    "names must be unique across dictionaries and rules",
                );
            }
            names.push(n.clone());
        }
        if let (Some(name), Some(kind), Some(pattern), Some(validator), true) =
            (name, kind, pattern, validator, enabled)
        {
            cfg.rules.push(RuleCfg {
                name,
                kind,
                pattern,
                action: action.or(cfg.default_action).unwrap_or(Action::Mask),
                validator,
            });
        }
    }

    if cx.errors.is_empty() {
        Ok(cfg)
    } else {
        Err(cx.errors)
    }
}

/// The items of a list-valued top-level key, as mappings.
fn seq(
    cx: &mut Ctx<'_>,
    top: &serde_yaml::Mapping,
    key: &str,
) -> Vec<(usize, serde_yaml::Mapping)> {
    match top.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(items)) => {
            let mut out = Vec::new();
            for (i, it) in items.iter().enumerate() {
                match it {
                    Value::Mapping(m) => out.push((i, m.clone())),
                    other => {
                        let s = scalar(other);
                        cx.bad(&format!("{key}[{i}]"), key, &s, "expected a mapping");
                    }
                }
            }
            out
        }
        Some(other) => {
            let s = scalar(other);
            cx.bad(key, key, &s, "expected a list");
            Vec::new()
        }
    }
}
