//! Stages 6–8 on a buffered request body: inspect, charge, decide.
//!
//! Pure functions over bytes and the state snapshot, so they are tested
//! without pingora. The proxy calls [`inspect_body`] once per request, either
//! before the upstream is contacted (bodies up to [`EARLY_BODY_LIMIT`]) or at
//! the end of a streamed body (see ARCHITECTURE.md, "When the body is judged").
//!
//! Order: redact (what the model would see) → count tokens → admit against
//! the budgets (a reservation) → ask the policy with the budget state → on a
//! deny the reservation is dropped, which releases it.

use crate::budget::{self, Budgets, ErrorShape, Reservation, Ticket};
use crate::config::Provider;
use crate::decision_log::Decision;
use crate::metrics::Metrics;
use crate::policy::{
    InputApp, InputBudget, InputDestination, InputFinding, InputRequest, InputTokens, PolicyInput,
};
use crate::respond::Refusal;
use crate::state::State;
use crate::tokens;
use crate::usage::{Dialect, IncludeUsage};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::Instant;

/// Largest body judged before any byte (headers included) goes upstream.
/// pingora replays a body read in `request_filter` from its retry buffer,
/// which holds 64 KiB; past that a body is judged at its end instead.
pub const EARLY_BODY_LIMIT: usize = 64 * 1024;

/// What is known about the request before its body.
#[derive(Debug, Clone)]
pub struct RequestInfo<'a> {
    /// App id.
    pub app: &'a str,
    /// Cgroup id of the caller (eBPF mode).
    pub cgroup_id: Option<u64>,
    /// Pid of the caller (eBPF mode).
    pub pid: Option<u32>,
    /// Original destination (eBPF mode).
    pub origin: Option<String>,
    /// Gateway name.
    pub gateway: &'a str,
    /// Gateway dialect.
    pub provider: Provider,
    /// HTTP method.
    pub method: &'a str,
    /// Request path.
    pub path: &'a str,
    /// `Content-Type`, if any.
    pub content_type: Option<&'a str>,
    /// `Content-Encoding`, if any.
    pub content_encoding: Option<&'a str>,
}

/// Token accounting decided for the request.
#[derive(Debug, Clone, Copy)]
pub struct TokenPlan {
    /// Prompt tokens counted or estimated.
    pub prompt: u64,
    /// Counted with the model's tokenizer (`true`) or estimated.
    pub counted: bool,
    /// Dialect used to read usage back from the response.
    pub dialect: Dialect,
    /// Strip the usage chunk from the stream (Airlock asked for it, the app did not).
    pub strip_usage: bool,
}

/// The body as it will be forwarded, and what was learnt from it.
#[derive(Debug, Clone)]
pub struct BodyVerdict {
    /// Bytes to send upstream.
    pub forward: Bytes,
    /// `allow` or `redact`.
    pub decision: Decision,
    /// `model` field, if the body is a JSON object with one.
    pub model: Option<String>,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// SHA-256 of the body as received.
    pub prompt_sha256: String,
    /// Finding counts by type.
    pub findings: BTreeMap<String, u64>,
    /// Reasons to record (e.g. monitor-mode would-be denials, soft limits).
    pub reasons: Vec<String>,
    /// The body was decompressed: drop `Content-Encoding` upstream.
    pub decompressed: bool,
    /// Token plan when the budget stage is on.
    pub tokens: Option<TokenPlan>,
    /// Budget remaining after admission, by budget name.
    pub budget: Option<BTreeMap<String, f64>>,
    /// Extra response headers for the app (soft-limit warning).
    pub response_headers: Vec<(String, String)>,
}

/// What the pipeline needs besides the state snapshot.
pub struct Stages<'a> {
    /// Long-lived budget counters.
    pub budgets: &'a Budgets,
    /// Metrics to count findings, rejections and denials.
    pub metrics: &'a Metrics,
}

fn dialect(p: Provider) -> Dialect {
    match p {
        Provider::Openai => Dialect::OpenAi,
        Provider::Anthropic => Dialect::Anthropic,
    }
}

fn is_json(ct: Option<&str>, body: &[u8]) -> bool {
    match ct {
        Some(ct) => ct.to_ascii_lowercase().contains("json"),
        None => body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
    }
}

/// Add `"stream_options":{"include_usage":true}` to a streaming OpenAI request
/// without re-serialising it (the app's bytes stay as they were).
fn splice_include_usage(body: &[u8], v: &serde_json::Value) -> Option<(Vec<u8>, IncludeUsage)> {
    let obj = v.as_object()?;
    if obj.get("stream").and_then(serde_json::Value::as_bool) != Some(true) {
        return Some((body.to_vec(), IncludeUsage::NotStreaming));
    }
    match obj.get("stream_options") {
        None => {
            let open = body.iter().position(|&b| b == b'{')?;
            let mut out = Vec::with_capacity(body.len() + 48);
            out.extend_from_slice(&body[..=open]);
            out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
            let rest = &body[open + 1..];
            if rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}') {
                out.push(b',');
            }
            out.extend_from_slice(rest);
            Some((out, IncludeUsage::Added))
        }
        Some(_) => crate::usage::ensure_include_usage_bytes(body).ok(),
    }
}

fn run_redaction(
    r: &crate::redact::Redactor,
    info: &RequestInfo<'_>,
    body: &[u8],
    state: &State,
    overrides: Option<&std::collections::HashMap<String, crate::redact::Action>>,
) -> Result<crate::redact::Outcome, Refusal> {
    use crate::redact::Refusal as R;
    let req = crate::redact::ScanRequest {
        body,
        content_type: info.content_type,
        content_encoding: info.content_encoding,
        path: info.path,
        app: info.app,
        max_bytes: state.loaded.config.limits.max_body_bytes as usize,
        overrides,
    };
    r.redact(&req).map_err(|e| match &e {
        R::BadJson(_) => Refusal::deny(400, "invalid_json", e.to_string()),
        R::DuplicateKey(_) => Refusal::deny(400, "duplicate_key", e.to_string()),
        R::UnsupportedEncoding(_) => Refusal::deny(415, "unsupported_encoding", e.to_string()),
        R::TooLarge => Refusal::deny(413, "body_too_large", e.to_string()),
    })
}

#[allow(clippy::too_many_arguments)] // one call site pair; a struct would only rename these
fn apply_redaction(
    metrics: Option<&Metrics>,
    info: &RequestInfo<'_>,
    out: crate::redact::Outcome,
    forward: &mut Bytes,
    findings: &mut BTreeMap<String, u64>,
    input_findings: &mut Vec<InputFinding>,
    decision: &mut Decision,
    decompressed: &mut bool,
) -> Result<(), Refusal> {
    let mut by_kind_action: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
    for f in &out.findings {
        *by_kind_action
            .entry((f.kind.to_string(), f.action.as_str()))
            .or_default() += 1;
    }
    for ((kind, action), n) in &by_kind_action {
        if let Some(m) = metrics {
            m.redaction(info.app, kind, action, *n);
        }
        *findings.entry(kind.clone()).or_default() += n;
        input_findings.push(InputFinding {
            kind: kind.to_ascii_lowercase(),
            action: (*action).to_string(),
            count: *n,
        });
    }
    if let Some(what) = out.blocked {
        let mut r = Refusal::deny(
            403,
            "redaction_block",
            format!("request blocked: it contains {what}"),
        );
        r.more_reasons = vec![format!("blocked:{what}")];
        return Err(r);
    }
    if let Some(b) = out.body {
        *forward = Bytes::from(b);
        *decision = Decision::Redact;
    }
    *decompressed |= out.decompressed;
    Ok(())
}

/// The two fields read from every JSON body; the rest is skipped (but validated).
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
}

/// Judge one complete request body. Never panics; bounded by the body size.
/// A refusal carries what was learnt of the body (model, hash, findings) for
/// the decision record.
pub fn inspect_body(
    state: &State,
    stages: &Stages<'_>,
    info: &RequestInfo<'_>,
    body: Bytes,
) -> Result<(BodyVerdict, Option<Ticket>), Refusal> {
    let mut seen = crate::respond::Seen::default();
    inspect_inner(state, stages, info, body, &mut seen).map_err(|mut r| {
        if r.seen.is_none() {
            r.seen = Some(seen);
        }
        r
    })
}

fn inspect_inner(
    state: &State,
    stages: &Stages<'_>,
    info: &RequestInfo<'_>,
    body: Bytes,
    seen: &mut crate::respond::Seen,
) -> Result<(BodyVerdict, Option<Ticket>), Refusal> {
    let original = body.clone();
    let mut forward = body;
    let mut findings: BTreeMap<String, u64> = BTreeMap::new();
    let mut input_findings: Vec<InputFinding> = Vec::new();
    let mut decision = Decision::Allow;
    let mut decompressed = false;
    let prompt_sha256 = crate::redact::prompt_sha256(&original);

    // Redaction (stage 6): every provider-bound string, as the model will see it.
    if let Some(r) = &state.redactor {
        let out = run_redaction(r, info, &original, state, None)?;
        let applied = apply_redaction(
            Some(stages.metrics),
            info,
            out,
            &mut forward,
            &mut findings,
            &mut input_findings,
            &mut decision,
            &mut decompressed,
        );
        if let Err(r) = applied {
            seen.prompt_sha256 = Some(prompt_sha256);
            seen.findings = findings;
            return Err(r);
        }
    }
    seen.prompt_sha256 = Some(prompt_sha256.clone());
    seen.findings = findings.clone();

    let json = is_json(info.content_type, &forward) && !forward.is_empty();
    // The token counter needs the document; otherwise only `model` and
    // `stream` are read, which costs a fraction of building a `Value`.
    let bad_json = |e: serde_json::Error| {
        Refusal::deny(
            400,
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    };
    let (value, model, stream) = if !json {
        (None, None, false)
    } else if state.limits.is_some() {
        let v: serde_json::Value = serde_json::from_slice(&forward).map_err(bad_json)?;
        let model = v.get("model").and_then(|m| m.as_str()).map(str::to_string);
        let stream = v.get("stream").and_then(|s| s.as_bool()).unwrap_or(false);
        (Some(v), model, stream)
    } else {
        let h: Head = serde_json::from_slice(&forward).map_err(bad_json)?;
        let model = h.model.and_then(|v| v.as_str().map(str::to_string));
        (
            None,
            model,
            h.stream.and_then(|v| v.as_bool()).unwrap_or(false),
        )
    };
    seen.model = model.clone();

    let mut reasons = Vec::new();
    let mut response_headers = Vec::new();
    let mut plan = None;
    let mut ticket = None;
    let mut budget_left = None;

    // Budgets (stage 7): reserve prompt + completion allowance now, reconcile on the response.
    if let Some(limits) = &state.limits {
        let d = dialect(info.provider);
        let mut strip_usage = false;
        if let (Dialect::OpenAi, Some(v)) = (d, value.as_ref()) {
            if let Some((rewritten, what)) = splice_include_usage(&forward, v) {
                if what == IncludeUsage::Added {
                    forward = Bytes::from(rewritten);
                    strip_usage = true;
                }
            }
        }
        let count = value
            .as_ref()
            .map(tokens::count_request)
            .unwrap_or(tokens::PromptCount {
                tokens: (forward.len() as u64).div_ceil(tokens::ESTIMATE_BYTES_PER_TOKEN),
                source: tokens::CountSource::Estimate,
            });
        let max_out = value.as_ref().and_then(tokens::max_output_tokens);
        let res = Reservation {
            prompt_tokens: count.tokens,
            max_output_tokens: max_out,
            model: model.clone().unwrap_or_default(),
        };
        match stages.budgets.admit(limits, info.app, &res, Instant::now()) {
            Ok(t) => {
                let rem = t.remaining();
                let left: BTreeMap<String, f64> = rem
                    .remaining
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), *v))
                    .collect();
                for (k, v) in &left {
                    stages.metrics.budget_remaining(info.app, k, *v);
                }
                for k in &rem.soft_exceeded {
                    reasons.push(format!("soft_limit:{}", k.as_str()));
                }
                if let Some(h) = budget::soft_limit_header(rem) {
                    response_headers.push(h);
                }
                budget_left = Some(left);
                plan = Some(TokenPlan {
                    prompt: count.tokens,
                    counted: count.source != tokens::CountSource::Estimate,
                    dialect: d,
                    strip_usage,
                });
                ticket = Some(t);
            }
            Err(rej) => {
                stages
                    .metrics
                    .budget_rejection(info.app, rej.budget.as_str());
                let shape = match info.provider {
                    Provider::Openai => ErrorShape::OpenAi,
                    Provider::Anthropic => ErrorShape::Anthropic,
                };
                let reply = budget::rejection_reply(shape, info.app, &rej);
                let mut r = Refusal::deny(
                    reply.status,
                    &format!("budget_exceeded:{}", rej.budget.as_str()),
                    "",
                );
                r.headers = reply.headers;
                r.body = Some(reply.body);
                return Err(r);
            }
        }
    }

    // Policy (stage 8).
    if let Some(policy) = &state.policy {
        let input = PolicyInput {
            app: InputApp {
                id: info.app.to_string(),
                cgroup_id: info.cgroup_id.unwrap_or(0),
                pid: info.pid,
            },
            destination: InputDestination {
                origin: info.origin.clone().unwrap_or_default(),
                gateway: info.gateway.to_string(),
                provider: match info.provider {
                    Provider::Openai => "openai".into(),
                    Provider::Anthropic => "anthropic".into(),
                },
            },
            request: InputRequest {
                method: info.method.to_string(),
                path: info.path.to_string(),
                model: model.clone().unwrap_or_default(),
                stream,
            },
            tokens: InputTokens {
                prompt: plan.map(|p| p.prompt).unwrap_or(0),
                source: match plan {
                    Some(p) if p.counted => "tokenizer".into(),
                    _ => "estimate".into(),
                },
                max_output: 0,
            },
            findings: std::mem::take(&mut input_findings),
            budget: InputBudget {
                remaining: budget_left.clone().unwrap_or_default(),
                soft_exceeded: Vec::new(),
            },
        };
        match policy.decide(&input) {
            Ok(d) if d.allow => {
                // Per-app redaction actions from the policy: scan again with them.
                if let (Some(r), false) = (&state.redactor, d.overrides.redaction.is_empty()) {
                    let ov: std::collections::HashMap<String, crate::redact::Action> = d
                        .overrides
                        .redaction
                        .iter()
                        .filter_map(|(k, v)| {
                            crate::redact::Action::parse(v).map(|a| (k.to_ascii_uppercase(), a))
                        })
                        .collect();
                    let out = run_redaction(r, info, &original, state, Some(&ov))?;
                    forward = original.clone();
                    findings.clear();
                    input_findings.clear();
                    decision = Decision::Allow;
                    // Counted once: the first pass already did.
                    apply_redaction(
                        None,
                        info,
                        out,
                        &mut forward,
                        &mut findings,
                        &mut input_findings,
                        &mut decision,
                        &mut decompressed,
                    )?;
                }
                if d.would_deny() {
                    for r in &d.reasons {
                        stages.metrics.policy_denial(info.app, r, false);
                        reasons.push(format!("monitor:{r}"));
                    }
                }
            }
            Ok(d) => {
                for r in &d.reasons {
                    stages.metrics.policy_denial(info.app, r, true);
                }
                let list: Vec<String> = d.reasons.iter().cloned().collect();
                let mut r = Refusal::deny(
                    403,
                    "policy_denied",
                    format!("denied by policy: {}", list.join(", ")),
                );
                r.more_reasons = list;
                return Err(r);
            }
            Err(e) => {
                // Fail closed: a policy that cannot answer denies.
                tracing::error!(error = %e, "policy evaluation failed");
                return Err(Refusal::error(
                    403,
                    "policy_error",
                    "the policy could not be evaluated; request refused",
                ));
            }
        }
    }

    Ok((
        BodyVerdict {
            model,
            stream,
            forward,
            decision,
            prompt_sha256,
            findings,
            reasons,
            decompressed,
            tokens: plan,
            budget: budget_left,
            response_headers,
        },
        ticket,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_usage_is_spliced_without_reordering() {
        let body = br#"{"stream":true,"model":"m","messages":[]}"#;
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        let (out, what) = splice_include_usage(body, &v).unwrap();
        assert_eq!(what, IncludeUsage::Added);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"stream_options":{"include_usage":true},"stream":true,"model":"m","messages":[]}"#
        );
        let v2: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v2["stream_options"]["include_usage"], true);
        let (same, what) = splice_include_usage(&out, &v2).unwrap();
        assert_eq!(what, IncludeUsage::AppAsked);
        assert_eq!(same, out);
    }
}
