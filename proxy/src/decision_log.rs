//! Stage 10: one JSON line per request, chained by hash.
//!
//! Each line carries `prev_hash`, the SHA-256 of the previous line's bytes
//! (without its newline), so a removed, reordered or edited line breaks the
//! chain at a point [`verify`] reports. When appending to an existing file the
//! chain continues from its last line. Raw prompts are never written; hashes
//! and finding counts are.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// `prev_hash` of the first line of a new chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the proxy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Forwarded unchanged.
    Allow,
    /// Refused by a stage (routing, limits, redaction block, budget, policy).
    Deny,
    /// Forwarded with parts of the prompt replaced.
    Redact,
    /// Could not be completed (upstream down, TLS failure, timeout, internal error).
    Error,
}

impl Decision {
    /// Label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Redact => "redact",
            Decision::Error => "error",
        }
    }
}

/// Time split of one request, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Whole request as the app saw it.
    pub total: f64,
    /// Time spent waiting on the gateway (connect to last response byte).
    pub upstream: f64,
    /// `total - upstream`: what Airlock added.
    pub overhead: f64,
}

/// The Kubernetes pod a request came from.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Service account.
    pub service_account: String,
}

/// Token accounting of one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Tokens {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
    /// `estimate` (counted by Airlock) or `usage` (reported by the gateway).
    pub source: String,
}

/// One decision record. Field order is the order on the line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DecisionRecord {
    /// Unique id (UUIDv7, time-ordered); also sent to the app as `x-airlock-decision-id`.
    pub decision_id: String,
    /// RFC 3339 time the request arrived.
    pub timestamp: String,
    /// App id, or `unidentified`.
    pub app: String,
    /// Cgroup v2 id of the calling process (eBPF mode).
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    /// Pid that called `connect()` (eBPF mode).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Original destination the app connected to (eBPF mode).
    #[serde(default)]
    pub origin: Option<String>,
    /// The calling pod, on Kubernetes: namespace, name, service account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Gateway name, if one matched.
    #[serde(default)]
    pub route: Option<String>,
    /// HTTP method.
    pub method: String,
    /// Request path (no query string: it may carry keys).
    pub path: String,
    /// `model` from the request body, when it has one.
    #[serde(default)]
    pub model: Option<String>,
    /// The decision.
    pub decision: Decision,
    /// Why (machine-readable, stable strings).
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Redaction findings: type → count.
    #[serde(default)]
    pub findings: BTreeMap<String, u64>,
    /// SHA-256 of the request body as the app sent it.
    #[serde(default)]
    pub prompt_sha256: Option<String>,
    /// Token counts.
    #[serde(default)]
    pub tokens: Option<Tokens>,
    /// Cost in USD.
    #[serde(default)]
    pub cost: Option<f64>,
    /// Budget remaining after this request, by budget name.
    #[serde(default)]
    pub budget: Option<BTreeMap<String, f64>>,
    /// Revision of the configuration and policy in force.
    pub policy_revision: String,
    /// HTTP status returned to the app (0: the connection died first).
    pub status: u16,
    /// Time split.
    pub latency_ms: Latency,
    /// SHA-256 (hex) of the previous line; [`GENESIS_HASH`] for the first.
    pub prev_hash: String,
}

/// Failure opening or writing the decision log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// File could not be opened or read.
    #[error("decision log {path}: {source}")]
    Io {
        /// File concerned.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
}

enum Sink {
    Stdout,
    File(File),
}

struct Inner {
    sink: Sink,
    last_hash: String,
    buf: Vec<u8>,
}

/// Appends decision records; safe to share between worker threads.
pub struct DecisionLog {
    inner: Mutex<Inner>,
}

impl DecisionLog {
    /// Open `-` (stdout) or a file for append, continuing the chain from its last line.
    pub fn open(path: &str) -> Result<DecisionLog, LogError> {
        let (sink, last_hash) = if path == "-" {
            (Sink::Stdout, GENESIS_HASH.to_string())
        } else {
            let p = PathBuf::from(path);
            let io = |source| LogError::Io {
                path: p.clone(),
                source,
            };
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&p)
                .map_err(io)?;
            let last = last_line_hash(&mut f).map_err(io)?;
            (
                Sink::File(f),
                last.unwrap_or_else(|| GENESIS_HASH.to_string()),
            )
        };
        Ok(DecisionLog {
            inner: Mutex::new(Inner {
                sink,
                last_hash,
                buf: Vec::with_capacity(1024),
            }),
        })
    }

    /// Chain and append one record. Runs once per request at its end; the lock is
    /// held only for serialisation and one `write`. A write failure is reported
    /// through tracing and counted by the caller — it never fails the request.
    pub fn append(&self, mut rec: DecisionRecord) -> std::io::Result<()> {
        let mut g = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let inner = &mut *g;
        rec.prev_hash = inner.last_hash.clone();
        inner.buf.clear();
        serde_json::to_writer(&mut inner.buf, &rec).map_err(std::io::Error::other)?;
        let hash = hex::encode(Sha256::digest(&inner.buf));
        inner.buf.push(b'\n');
        match &mut inner.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&inner.buf)?;
                out.flush()?;
            }
            Sink::File(f) => f.write_all(&inner.buf)?,
        }
        inner.last_hash = hash;
        Ok(())
    }
}

/// Hash of the last complete line of a file, if any.
fn last_line_hash(f: &mut File) -> std::io::Result<Option<String>> {
    let len = f.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(None);
    }
    // Read back until the line before the final newline is complete.
    let mut chunk = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(chunk);
        f.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::with_capacity((len - start) as usize);
        f.take(len - start).read_to_end(&mut tail)?;
        let trimmed = tail.strip_suffix(b"\n").unwrap_or(&tail);
        if let Some(pos) = trimmed.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(hex::encode(Sha256::digest(&trimmed[pos + 1..]))));
        }
        if start == 0 {
            return Ok(Some(hex::encode(Sha256::digest(trimmed))));
        }
        chunk *= 4;
    }
}

/// Outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every link holds.
    Intact {
        /// Lines checked.
        lines: u64,
    },
    /// The first broken link.
    Broken {
        /// 1-based line number whose `prev_hash` does not match the line before it (or that does not parse).
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

/// Walk a decision log and report the first broken link. The first line's
/// `prev_hash` is taken as the anchor (a rotated file starts mid-chain).
pub fn verify(path: &Path) -> std::io::Result<Verification> {
    let f = File::open(path)?;
    let mut rd = BufReader::new(f);
    let mut line = Vec::new();
    let mut n = 0u64;
    let mut prev: Option<String> = None;
    loop {
        line.clear();
        if rd.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        #[derive(Deserialize)]
        struct Link {
            prev_hash: String,
        }
        let link: Link = match serde_json::from_slice(body) {
            Ok(l) => l,
            Err(e) => {
                return Ok(Verification::Broken {
                    line: n,
                    reason: format!("not a decision record: {e}"),
                })
            }
        };
        if let Some(expected) = &prev {
            if &link.prev_hash != expected {
                return Ok(Verification::Broken {
                    line: n,
                    reason: format!(
                        "prev_hash {} does not match line {} (sha256 {})",
                        link.prev_hash,
                        n - 1,
                        expected
                    ),
                });
            }
        }
        prev = Some(hex::encode(Sha256::digest(body)));
    }
    Ok(Verification::Intact { lines: n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> DecisionRecord {
        DecisionRecord {
            decision_id: format!("id-{i}"),
            timestamp: "2026-01-01T00:00:00Z".into(),
            app: "a".into(),
            cgroup_id: None,
            pid: None,
            origin: None,
            pod: None,
            route: None,
            method: "POST".into(),
            path: "/".into(),
            model: None,
            decision: Decision::Allow,
            reasons: vec![],
            findings: BTreeMap::new(),
            prompt_sha256: None,
            tokens: None,
            cost: None,
            budget: None,
            policy_revision: "r".into(),
            status: 200,
            latency_ms: Latency::default(),
            prev_hash: String::new(),
        }
    }

    #[test]
    fn chain_survives_reopen_and_detects_edits() {
        let dir = std::env::temp_dir().join(format!("airlock-dl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("log.jsonl");
        let ps = p.to_str().unwrap().to_string();
        {
            let l = DecisionLog::open(&ps).unwrap();
            for i in 0..3 {
                l.append(rec(i)).unwrap();
            }
        }
        {
            let l = DecisionLog::open(&ps).unwrap();
            l.append(rec(3)).unwrap();
        }
        assert_eq!(verify(&p).unwrap(), Verification::Intact { lines: 4 });
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.lines().next().unwrap().contains(GENESIS_HASH));
        // Edit line 2: line 3's link breaks.
        let edited = text.replacen("id-1", "id-X", 1);
        std::fs::write(&p, edited).unwrap();
        match verify(&p).unwrap() {
            Verification::Broken { line, .. } => assert_eq!(line, 3),
            v => panic!("{v:?}"),
        }
        // Remove line 2: line 3 (now 2) breaks.
        let removed: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        std::fs::write(&p, removed.join("\n") + "\n").unwrap();
        match verify(&p).unwrap() {
            Verification::Broken { line, .. } => assert_eq!(line, 2),
            v => panic!("{v:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
