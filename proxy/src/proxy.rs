//! The pingora extension point, kept thin: each phase calls into a stage module.
//!
//! Per-request state lives in [`Ctx`]. The decision record is written in
//! `logging`, which pingora calls exactly once per request whatever path it
//! took (early refusal, upstream failure, client gone), so every request gets
//! exactly one line.

use crate::budget::{Charge, Ticket};
use crate::config::Provider;
use crate::decision_log::{Decision, DecisionRecord, Latency};
use crate::intercept::Origin;
use crate::metrics::RequestLabels;
use crate::pipeline::{self, BodyVerdict, RequestInfo, Stages, EARLY_BODY_LIMIT};
use crate::respond::Refusal;
use crate::route::{Gateway, RouteError};
use crate::state::{Shared, State};
use crate::usage::{SseUsage, Usage};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::protocols::http::ServerSession as HttpSession;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Header carrying the decision id back to the app.
pub const DECISION_ID_HEADER: &str = "x-airlock-decision-id";

/// The Airlock data plane.
pub struct AirlockProxy {
    shared: Arc<Shared>,
}

impl AirlockProxy {
    /// Create the proxy over the shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// How the request body is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    /// No body.
    None,
    /// Read and judged in `request_filter`; `forward` replaces pingora's replay.
    Early,
    /// Collected in `request_body_filter`, judged at its end.
    Late,
}

/// Who is on the other end of a redirected connection; found once per
/// connection (the eBPF record is consumed) and carried across keep-alive.
#[derive(Debug, Clone)]
struct ConnIdentity {
    origin: Origin,
    app: String,
    pod: Option<crate::decision_log::PodRef>,
}

/// Per-request state.
pub struct Ctx {
    conn: Option<ConnIdentity>,
    started: Instant,
    timestamp: SystemTime,
    decision_id: String,
    state: Option<Arc<State>>,
    app: String,
    gateway: Option<Arc<Gateway>>,
    method: String,
    path: String,
    body_mode: BodyMode,
    collected: BytesMut,
    verdict: Option<BodyVerdict>,
    refusal: Option<Refusal>,
    upstream_start: Option<Instant>,
    upstream_end: Option<Instant>,
    status: u16,
    /// Budget reservation, reconciled with the response's usage.
    ticket: Option<Ticket>,
    /// Usage reader for a streamed response.
    sse: Option<SseUsage>,
    /// A JSON response collected (bounded) for its `usage`.
    resp_json: Option<Vec<u8>>,
    /// What the request was finally charged.
    charge: Option<(Charge, &'static str)>,
}

/// Largest JSON response kept to read its `usage`; past it the reservation stands.
const MAX_USAGE_BODY: usize = 8 * 1024 * 1024;

impl Ctx {
    fn provider(&self) -> Provider {
        self.gateway
            .as_ref()
            .map(|g| g.provider)
            .unwrap_or_default()
    }
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// pingora drops `Content-Length` when `Transfer-Encoding` is also present; the
/// raw header block still shows both, and such framing is refused outright.
fn has_conflicting_framing(session: &Session) -> bool {
    if !session
        .req_header()
        .headers
        .contains_key("transfer-encoding")
    {
        return false;
    }
    match session.as_downstream() {
        HttpSession::H1(s) => {
            let raw = s.get_headers_raw_bytes();
            raw.split(|&b| b == b'\n')
                .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
        }
        _ => false,
    }
}

async fn write_refusal(
    session: &mut Session,
    r: &Refusal,
    provider: Provider,
    decision_id: &str,
) -> Result<()> {
    let body = r.body(provider);
    let mut h = ResponseHeader::build(r.status, Some(4 + r.headers.len()))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body.len().to_string())?;
    h.insert_header(DECISION_ID_HEADER, decision_id)?;
    for (k, v) in &r.headers {
        h.insert_header(k.clone(), v.as_str())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(())
}

impl AirlockProxy {
    /// Answer now and stop the request (`request_filter` returns `Ok(true)`).
    async fn refuse(&self, session: &mut Session, ctx: &mut Ctx, r: Refusal) -> Result<bool> {
        ctx.status = r.status;
        // Drain a small unread body so the app's keep-alive connection survives the refusal;
        // a large one is not worth reading: the connection is closed instead.
        let small = header_str(session, "content-length")
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n <= EARLY_BODY_LIMIT);
        if small && !session.as_mut().is_body_done() {
            let _ = session.as_downstream_mut().drain_request_body().await;
        }
        let res = write_refusal(session, &r, ctx.provider(), &ctx.decision_id).await;
        ctx.refusal = Some(r);
        res.map(|_| true)
    }

    fn judge(&self, ctx: &mut Ctx, session: &Session, body: Bytes) -> Result<(), Refusal> {
        let state = ctx
            .state
            .clone()
            .ok_or_else(|| Refusal::error(500, "internal", "no state snapshot"))?;
        let gw = ctx.gateway.clone();
        let info = RequestInfo {
            app: &ctx.app,
            cgroup_id: ctx.conn.as_ref().map(|c| c.origin.cgroup_id),
            pid: ctx.conn.as_ref().map(|c| c.origin.pid),
            origin: ctx.conn.as_ref().map(|c| c.origin.orig_dst.to_string()),
            gateway: gw.as_ref().map(|g| &*g.name.0).unwrap_or(""),
            provider: ctx.provider(),
            method: &ctx.method,
            path: &ctx.path,
            content_type: header_str(session, "content-type"),
            content_encoding: header_str(session, "content-encoding"),
        };
        let stages = Stages {
            budgets: &self.shared.budgets,
            metrics: &self.shared.metrics,
        };
        let (v, ticket) = pipeline::inspect_body(&state, &stages, &info, body)?;
        ctx.verdict = Some(v);
        ctx.ticket = ticket;
        Ok(())
    }

    /// Replace the reservation with what the gateway reported. `cut_short`: the
    /// response ended early (client gone, upstream failure) after reaching the gateway.
    fn settle(&self, ctx: &mut Ctx, cut_short: bool) {
        let Some(ticket) = ctx.ticket.take() else {
            return;
        };
        let plan = ctx.verdict.as_ref().and_then(|v| v.tokens);
        let reported: Option<Usage> = if let Some(sse) = &ctx.sse {
            match (sse.usage(), cut_short) {
                (Some(u), _) => Some(u),
                // A stream cut short is charged for what it streamed, so hanging up is no way around the budget.
                (None, true) => Some(sse.partial_usage(plan.map(|p| p.prompt).unwrap_or(0))),
                (None, false) => None,
            }
        } else if let (Some(buf), Some(p)) = (ctx.resp_json.take(), plan) {
            crate::usage::from_json(p.dialect, &buf)
        } else {
            None
        };
        let now = Instant::now();
        let (usage, source) = match reported {
            Some(u) => (u, "usage"),
            None => {
                let c = ticket.estimate();
                (
                    Usage {
                        prompt_tokens: c.prompt_tokens,
                        completion_tokens: c.completion_tokens,
                    },
                    "estimate",
                )
            }
        };
        let charge = ticket.reconcile(usage, now);
        let model = ctx
            .verdict
            .as_ref()
            .and_then(|v| v.model.clone())
            .unwrap_or_default();
        let m = &self.shared.metrics;
        let (pk, ck) = if source == "usage" {
            ("prompt", "completion")
        } else {
            ("prompt_estimate", "completion_estimate")
        };
        m.tokens(&ctx.app, &model, pk, charge.prompt_tokens);
        m.tokens(&ctx.app, &model, ck, charge.completion_tokens);
        m.cost(&ctx.app, &model, charge.cost_usd);
        ctx.charge = Some((charge, source));
    }

    /// Consume the eBPF origin record of this connection's peer and resolve the app.
    /// No record means the client was not redirected: refused, never routed by its headers.
    fn identify(
        &self,
        agent: &crate::agent::Agent,
        session: &Session,
    ) -> Result<ConnIdentity, Refusal> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .copied()
            .ok_or_else(|| Refusal::deny(403, "no_origin_record", "client address unknown"))?;
        let origin = match agent.origins().take(peer) {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(Refusal::deny(
                    403,
                    "no_origin_record",
                    format!("connection from {peer} was not redirected by Airlock; refused"),
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, %peer, "origin lookup failed");
                return Err(Refusal::error(
                    403,
                    "origin_lookup_failed",
                    "could not establish the caller's identity; refused",
                ));
            }
        };
        let resolved = agent.identity().resolve(origin.cgroup_id);
        let pod = match (&self.shared.kube, &resolved) {
            (Some(k), Some(r)) => {
                k.app_for_cgroup_path(&r.cgroup_path)
                    .map(|p| crate::decision_log::PodRef {
                        namespace: p.namespace,
                        name: p.pod,
                        service_account: p.service_account,
                    })
            }
            _ => None,
        };
        let app = match resolved {
            Some(r) => r.app.0,
            // A pod the watch cannot name (not listed yet, label missing): as configured.
            None => match &self.shared.kube {
                Some(k) if k.unknown_pod() == crate::identity::kube::UnknownPod::Deny => {
                    return Err(Refusal::deny(
                        403,
                        "unknown_pod",
                        "the calling pod is not known to Airlock; refused",
                    ))
                }
                _ => "unknown".to_string(),
            },
        };
        Ok(ConnIdentity { origin, app, pod })
    }

    /// Read the whole (small) body before anything goes upstream.
    async fn read_early_body(&self, session: &mut Session, limit: usize) -> Result<Bytes, Refusal> {
        // pingora replays what request_filter read from this buffer to the upstream.
        session.as_mut().enable_retry_buffering();
        let mut buf = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(Refusal::deny(
                            413,
                            "body_too_large",
                            format!("request body exceeds {limit} bytes"),
                        ));
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(buf.freeze()),
                Err(e) => {
                    return Err(Refusal::deny(
                        400,
                        "bad_request_body",
                        format!("could not read request body: {e}"),
                    ))
                }
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for AirlockProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            conn: None,
            started: Instant::now(),
            timestamp: SystemTime::now(),
            decision_id: uuid::Uuid::now_v7().to_string(),
            state: None,
            app: "unidentified".into(),
            gateway: None,
            method: String::new(),
            path: String::new(),
            body_mode: BodyMode::None,
            collected: BytesMut::new(),
            verdict: None,
            refusal: None,
            upstream_start: None,
            upstream_end: None,
            status: 0,
            ticket: None,
            sse: None,
            resp_json: None,
            charge: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        // A keep-alive connection serves many requests: the clock starts per request.
        ctx.started = Instant::now();
        ctx.timestamp = SystemTime::now();
        let state = self.shared.state.load_full();
        ctx.state = Some(state.clone());
        let cfg = &state.loaded.config;
        {
            let req = session.req_header();
            ctx.method = req.method.as_str().to_string();
            ctx.path = req.uri.path().to_string();
        }

        if has_conflicting_framing(session) {
            let r = Refusal::deny(
                400,
                "conflicting_framing",
                "both Content-Length and Transfer-Encoding are present",
            );
            return self.refuse(session, ctx, r).await;
        }

        // Identity and route (stages 3–5).
        let routed = if let Some(agent) = &self.shared.agent {
            // Redirected traffic: who and where come from the kernel, never from headers.
            if ctx.conn.is_none() {
                match self.identify(agent, session) {
                    Ok(c) => ctx.conn = Some(c),
                    Err(r) => return self.refuse(session, ctx, r).await,
                }
            }
            let Some(c) = ctx.conn.as_ref() else {
                let r = Refusal::error(500, "internal", "connection identity missing");
                return self.refuse(session, ctx, r).await;
            };
            ctx.app = c.app.clone();
            state.router.by_origin(c.origin.orig_dst)
        } else {
            if let Some(h) = &cfg.explicit.app_header {
                if let Some(app) = header_str(session, h) {
                    let app = app.trim();
                    if !app.is_empty() && app.len() <= 128 {
                        ctx.app = app.to_string();
                    }
                }
            }
            let host = header_str(session, "host")
                .map(str::to_string)
                .or_else(|| session.req_header().uri.host().map(str::to_string));
            state.router.by_host(host.as_deref())
        };
        match routed {
            Ok(g) => ctx.gateway = Some(g),
            Err(e) => {
                let reason = match e {
                    RouteError::NoDestination => "no_destination",
                    _ => "unknown_destination",
                };
                let r = Refusal::deny(403, reason, e.to_string());
                return self.refuse(session, ctx, r).await;
            }
        }

        // Body bound and mode.
        let max = cfg.limits.max_body_bytes;
        let declared: Option<u64> =
            header_str(session, "content-length").and_then(|v| v.trim().parse().ok());
        if let Some(n) = declared {
            if n > max {
                let r = Refusal::deny(
                    413,
                    "body_too_large",
                    format!("request body of {n} bytes exceeds limits.max_body_bytes ({max})"),
                );
                return self.refuse(session, ctx, r).await;
            }
        }
        if session.as_mut().is_body_empty() {
            ctx.body_mode = BodyMode::None;
            if let Err(r) = self.judge(ctx, session, Bytes::new()) {
                return self.refuse(session, ctx, r).await;
            }
        } else if declared.is_some_and(|n| n as usize <= EARLY_BODY_LIMIT) {
            ctx.body_mode = BodyMode::Early;
            let limit = (max as usize).min(EARLY_BODY_LIMIT);
            let body = match self.read_early_body(session, limit).await {
                Ok(b) => b,
                Err(r) => return self.refuse(session, ctx, r).await,
            };
            if let Err(r) = self.judge(ctx, session, body) {
                return self.refuse(session, ctx, r).await;
            }
        } else {
            ctx.body_mode = BodyMode::Late;
        }
        Ok(false)
    }

    fn persist_connection_context(
        &self,
        _session: &Session,
        ctx: &Ctx,
    ) -> Option<Box<dyn std::any::Any + Send + Sync>> {
        ctx.conn
            .clone()
            .map(|c| Box::new(c) as Box<dyn std::any::Any + Send + Sync>)
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        ctx: &mut Ctx,
        prev: Box<dyn std::any::Any + Send + Sync>,
    ) {
        if let Ok(c) = prev.downcast::<ConnIdentity>() {
            ctx.conn = Some(*c);
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let (Some(g), Some(st)) = (&ctx.gateway, &ctx.state) else {
            return Error::e_explain(InternalError, "no gateway selected");
        };
        if ctx.upstream_start.is_none() {
            ctx.upstream_start = Some(Instant::now());
        }
        Ok(Box::new(g.peer(&st.loaded.config.timeouts)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut pingora::http::RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(st) = &ctx.state {
            if let Some(h) = &st.loaded.config.explicit.app_header {
                req.remove_header(h.as_str());
            }
        }
        match ctx.body_mode {
            BodyMode::None => {}
            BodyMode::Early => {
                if let Some(v) = &ctx.verdict {
                    req.insert_header("content-length", v.forward.len().to_string())?;
                    if v.decompressed {
                        req.remove_header("content-encoding");
                    }
                }
            }
            BodyMode::Late => {
                // The judged body may differ in length: let pingora send it chunked.
                req.remove_header("content-length");
            }
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match ctx.body_mode {
            BodyMode::None => Ok(()),
            BodyMode::Early => {
                // Replace pingora's replay of the original with the judged body.
                *body = Some(if end_of_stream {
                    ctx.verdict
                        .as_ref()
                        .map(|v| v.forward.clone())
                        .unwrap_or_default()
                } else {
                    Bytes::new()
                });
                Ok(())
            }
            BodyMode::Late => {
                let max = ctx
                    .state
                    .as_ref()
                    .map(|s| s.loaded.config.limits.max_body_bytes as usize)
                    .unwrap_or(0);
                if let Some(chunk) = body.take() {
                    if ctx.collected.len() + chunk.len() > max {
                        ctx.refusal = Some(Refusal::deny(
                            413,
                            "body_too_large",
                            format!("request body exceeds limits.max_body_bytes ({max})"),
                        ));
                        return Error::e_explain(HTTPStatus(413), "request body too large");
                    }
                    ctx.collected.extend_from_slice(&chunk);
                }
                if !end_of_stream {
                    // Some(empty), never None: None would end the upstream body early.
                    *body = Some(Bytes::new());
                    return Ok(());
                }
                let whole = std::mem::take(&mut ctx.collected).freeze();
                match self.judge(ctx, session, whole) {
                    Ok(()) => {
                        *body = ctx.verdict.as_ref().map(|v| v.forward.clone());
                        Ok(())
                    }
                    Err(r) => {
                        let status = r.status;
                        ctx.refusal = Some(r);
                        Error::e_explain(
                            HTTPStatus(status),
                            "request refused after body inspection",
                        )
                    }
                }
            }
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.status = resp.status.as_u16();
        resp.insert_header(DECISION_ID_HEADER, ctx.decision_id.as_str())?;
        if let Some(v) = &ctx.verdict {
            for (k, val) in &v.response_headers {
                resp.insert_header(k.clone(), val.as_str())?;
            }
        }
        if ctx.ticket.is_some() {
            if !resp.status.is_success() {
                // The gateway produced nothing billable: give the reservation back.
                ctx.ticket = None;
            } else {
                let plan = ctx.verdict.as_ref().and_then(|v| v.tokens);
                let sse = resp
                    .headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|ct| ct.starts_with("text/event-stream"));
                if let Some(plan) = plan {
                    if sse {
                        ctx.sse = Some(SseUsage::new(plan.dialect, plan.strip_usage));
                        if plan.strip_usage {
                            // The stream will be shorter than the upstream said.
                            resp.remove_header("content-length");
                        }
                    } else {
                        ctx.resp_json = Some(Vec::new());
                    }
                }
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(sse) = ctx.sse.as_mut() {
            let mut out = Vec::new();
            if let Some(chunk) = body.as_ref() {
                sse.feed(chunk, &mut out);
            }
            if end_of_stream {
                sse.finish(&mut out);
            }
            *body = Some(Bytes::from(out));
        } else if let (Some(buf), Some(chunk)) = (ctx.resp_json.as_mut(), body.as_ref()) {
            if buf.len() + chunk.len() <= MAX_USAGE_BODY {
                buf.extend_from_slice(chunk);
            } else {
                ctx.resp_json = None;
            }
        }
        if end_of_stream {
            if ctx.upstream_end.is_none() {
                ctx.upstream_end = Some(Instant::now());
            }
            self.settle(ctx, false);
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let refusal = match ctx.refusal.clone() {
            Some(r) => r,
            None => classify_error(e, ctx, &self.shared),
        };
        if ctx.upstream_end.is_none() && ctx.upstream_start.is_some() {
            ctx.upstream_end = Some(Instant::now());
        }
        let code = if session.response_written().is_some() {
            // Mid-stream failure: the status is already out; the record says what happened.
            ctx.status
        } else if refusal.status > 0 {
            match write_refusal(session, &refusal, ctx.provider(), &ctx.decision_id).await {
                Ok(()) => refusal.status,
                Err(_) => 0,
            }
        } else {
            0
        };
        ctx.status = code;
        ctx.refusal = Some(refusal);
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, _session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.ticket.is_some() {
            if ctx.status > 0 && ctx.status < 300 && ctx.upstream_start.is_some() {
                self.settle(ctx, true);
            } else {
                // Never reached the gateway (or it failed): release the reservation.
                ctx.ticket = None;
            }
        }
        let end = Instant::now();
        let total = end.duration_since(ctx.started).as_secs_f64();
        let upstream = match (ctx.upstream_start, ctx.upstream_end) {
            (Some(s), Some(t)) => t.duration_since(s).as_secs_f64(),
            (Some(s), None) => end.duration_since(s).as_secs_f64(),
            _ => 0.0,
        };
        let overhead = (total - upstream).max(0.0);
        let (decision, mut reasons) = match (&ctx.refusal, &ctx.verdict) {
            (Some(r), _) => {
                let mut v = vec![r.reason.clone()];
                v.extend(r.more_reasons.iter().cloned());
                (r.decision, v)
            }
            (None, _) if e.is_some() && ctx.status == 0 => {
                (Decision::Error, vec!["client_disconnected".to_string()])
            }
            (None, Some(v)) => (v.decision, v.reasons.clone()),
            (None, None) => (Decision::Allow, Vec::new()),
        };
        if decision == Decision::Error && reasons.is_empty() {
            reasons.push("error".into());
        }
        let gateway = ctx.gateway.as_ref().map(|g| g.name.0.to_string());
        let gw_label = gateway.as_deref().unwrap_or("none");
        let m = &self.shared.metrics;
        m.request(&RequestLabels {
            app: &ctx.app,
            gateway: gw_label,
            decision: decision.as_str(),
        });
        if ctx.upstream_start.is_some() {
            m.upstream_time(gw_label, upstream);
        }
        m.overhead_time(overhead);
        let v = ctx.verdict.as_ref();
        let seen = ctx.refusal.as_ref().and_then(|r| r.seen.as_ref());
        let rec = DecisionRecord {
            decision_id: ctx.decision_id.clone(),
            timestamp: humantime::format_rfc3339_micros(ctx.timestamp).to_string(),
            app: ctx.app.clone(),
            cgroup_id: ctx.conn.as_ref().map(|c| c.origin.cgroup_id),
            pid: ctx.conn.as_ref().map(|c| c.origin.pid),
            origin: ctx.conn.as_ref().map(|c| c.origin.orig_dst.to_string()),
            pod: ctx.conn.as_ref().and_then(|c| c.pod.clone()),
            route: gateway,
            method: ctx.method.clone(),
            path: ctx.path.clone(),
            model: v
                .and_then(|v| v.model.clone())
                .or_else(|| seen.and_then(|s| s.model.clone())),
            decision,
            reasons,
            findings: v
                .map(|v| v.findings.clone())
                .or_else(|| seen.map(|s| s.findings.clone()))
                .unwrap_or_default(),
            prompt_sha256: v
                .map(|v| v.prompt_sha256.clone())
                .or_else(|| seen.and_then(|s| s.prompt_sha256.clone())),
            tokens: ctx
                .charge
                .as_ref()
                .map(|(c, src)| crate::decision_log::Tokens {
                    prompt: c.prompt_tokens,
                    completion: c.completion_tokens,
                    source: (*src).to_string(),
                }),
            cost: ctx
                .charge
                .as_ref()
                .map(|(c, _)| (c.cost_usd * 1e6).round() / 1e6),
            budget: v.and_then(|v| v.budget.clone()),
            policy_revision: ctx
                .state
                .as_ref()
                .map(|s| s.revision.0.clone())
                .unwrap_or_default(),
            status: ctx.status,
            latency_ms: Latency {
                total: round3(total * 1e3),
                upstream: round3(upstream * 1e3),
                overhead: round3(overhead * 1e3),
            },
            prev_hash: String::new(),
        };
        if let Err(err) = self.shared.log.append(rec) {
            m.log_error();
            tracing::error!(error = %err, "decision log write failed");
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Upstream failures → 502/504 with a stable reason, counted per kind.
fn classify_error(e: &Error, ctx: &Ctx, shared: &Shared) -> Refusal {
    let gw = ctx
        .gateway
        .as_ref()
        .map(|g| g.name.0.to_string())
        .unwrap_or_else(|| "none".into());
    let (status, reason, kind) = match e.etype() {
        HTTPStatus(code) => (*code, "http_error", None),
        ConnectTimedout | TLSHandshakeTimedout | ReadTimedout | WriteTimedout => {
            (504, "upstream_timeout", Some("timeout"))
        }
        TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup => {
            (502, "upstream_tls_failed", Some("tls"))
        }
        ConnectRefused | ConnectNoRoute | ConnectError | SocketError | BindError => {
            (502, "upstream_connect_failed", Some("connect"))
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, "upstream_failed", Some("other")),
            ErrorSource::Downstream => match e.etype() {
                ReadError | WriteError | ConnectionClosed => (0, "client_disconnected", None),
                _ => (400, "bad_request", None),
            },
            _ => (500, "internal", Some("internal")),
        },
    };
    if let Some(k) = kind {
        shared.metrics.upstream_error(&gw, k);
    }
    Refusal::error(
        status,
        reason,
        format!("airlock: {reason} ({})", e.etype().as_str()),
    )
}
