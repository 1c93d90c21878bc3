//! A mock inference gateway over real TLS.
//!
//! Answers OpenAI-style `/v1/chat/completions` (JSON, or SSE with a final
//! `usage` chunk when asked) and Anthropic-style `/v1/messages` (JSON or SSE
//! with `message_start`/`message_delta` usage), and records every request it
//! receives — headers, body, SNI, connection — so tests assert on exactly what
//! left the node. Test knobs travel as request headers:
//! `x-mock-chunks` (SSE chunk count), `x-mock-chunk-delay-ms`,
//! `x-mock-delay-ms` (before the response header), `x-mock-status`.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{channel::Channel, BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The OpenAI chat path the mock answers.
pub const REQUEST_PATH: &str = "/v1/chat/completions";

/// One request as the gateway saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Received {
    /// TLS connection number (1-based, in accept order).
    pub connection: u64,
    /// SNI the client sent.
    pub sni: Option<String>,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body bytes exactly as received (after de-chunking).
    #[serde(serialize_with = "as_lossy_str")]
    pub body: Vec<u8>,
}

fn as_lossy_str<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

impl Received {
    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Options for the mock.
#[derive(Debug, Clone, Default)]
pub struct GatewayOpts {
    /// Require a client certificate signed by this CA (mTLS).
    pub client_ca: Option<std::path::PathBuf>,
    /// Do not keep requests (benchmarks: memory would grow without bound).
    pub no_record: bool,
}

/// A running mock gateway (its own thread and runtime); stops on drop.
pub struct MockGateway {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockGateway {
    /// Start on `addr` (`127.0.0.1:0` for any port) with the given server certificate.
    pub fn start(
        addr: SocketAddr,
        cert: &Path,
        key: &Path,
        opts: GatewayOpts,
    ) -> anyhow::Result<MockGateway> {
        let config = server_config(cert, key, opts.client_ca.as_deref())?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel();
        let (rec, conns) = (received.clone(), connections.clone());
        let record = !opts.no_record;
        let thread = std::thread::Builder::new()
            .name("mock-gateway".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(_) => return,
                };
                rt.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(std_listener) else {
                        return;
                    };
                    loop {
                        let (tcp, _) = tokio::select! {
                            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                            _ = &mut stop_rx => return,
                        };
                        let _ = tcp.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        let rec = rec.clone();
                        let conns = conns.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let n = conns.fetch_add(1, Ordering::SeqCst) + 1;
                            let (_, sess) = tls.get_ref();
                            let sni = sess.server_name().map(str::to_string);
                            let client_cert = sess.peer_certificates().is_some();
                            let svc = service_fn(move |req| {
                                handle(req, rec.clone(), record, n, sni.clone(), client_cert)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        });
                    }
                });
            })?;
        Ok(MockGateway {
            addr,
            received,
            connections,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// TLS connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for MockGateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> =
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?))
            .collect::<Result<_, _>>()?;
    let key: PrivateKeyDer<'static> =
        rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
            .ok_or_else(|| anyhow::anyhow!("no key in {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(ca)?)) {
                roots.add(c?)?;
            }
            let v =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build()?;
            builder.with_client_cert_verifier(v)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

type Body = http_body_util::Either<Full<Bytes>, Channel<Bytes>>;

fn hdr_u64(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Rough token count for the mock's `usage`: one token per 4 bytes of prompt.
fn mock_prompt_tokens(body: &[u8]) -> u64 {
    (body.len() as u64).div_ceil(4)
}

const REPLY_WORDS: &[&str] = &["Hello", " from", " the", " mock", " gateway", "."];

async fn handle(
    req: Request<Incoming>,
    rec: Arc<Mutex<Vec<Received>>>,
    record: bool,
    connection: u64,
    sni: Option<String>,
    client_cert: bool,
) -> Result<Response<Body>, std::convert::Infallible> {
    let chunks = hdr_u64(&req, "x-mock-chunks").unwrap_or(REPLY_WORDS.len() as u64);
    let chunk_delay = hdr_u64(&req, "x-mock-chunk-delay-ms").unwrap_or(0);
    let delay = hdr_u64(&req, "x-mock-delay-ms").unwrap_or(0);
    let status = hdr_u64(&req, "x-mock-status").unwrap_or(200) as u16;
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(_) => return Ok(plain(StatusCode::BAD_REQUEST, "body read failed")),
    };
    if let Some(mut r) = rec.lock().ok().filter(|_| record) {
        r.push(Received {
            connection,
            sni,
            client_cert,
            method,
            path: path.clone(),
            headers,
            body: body.clone(),
        });
    }
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if path == "/__mock/health" {
        return Ok(plain(StatusCode::OK, "ok"));
    }
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let model = json["model"].as_str().unwrap_or("mock-model").to_string();
    let stream = json["stream"].as_bool().unwrap_or(false);
    let prompt_tokens = mock_prompt_tokens(&body);
    let completion_tokens = chunks;
    if status != 200 {
        let mut r = plain(
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            "mock status",
        );
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        return Ok(r);
    }
    match (path.as_str(), stream) {
        ("/v1/chat/completions", false) => {
            let v = serde_json::json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant",
                    "content": reply_text(chunks)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}
            });
            Ok(json_resp(&v))
        }
        ("/v1/chat/completions", true) => {
            let include_usage = json["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false);
            let mut events = Vec::new();
            for i in 0..chunks {
                let w = REPLY_WORDS[(i as usize) % REPLY_WORDS.len()];
                events.push(format!(
                    "data: {}\n\n",
                    serde_json::json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","model":model,
                        "choices":[{"index":0,"delta":{"content":w},"finish_reason":null}]})
                ));
            }
            if include_usage {
                events.push(format!(
                    "data: {}\n\n",
                    serde_json::json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","model":model,
                        "choices":[],"usage":{"prompt_tokens":prompt_tokens,"completion_tokens":completion_tokens,
                        "total_tokens":prompt_tokens+completion_tokens}})
                ));
            }
            events.push("data: [DONE]\n\n".to_string());
            Ok(sse(events, chunk_delay))
        }
        ("/v1/messages", false) => {
            let v = serde_json::json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": reply_text(chunks)}],
                "stop_reason": "end_turn",
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}
            });
            Ok(json_resp(&v))
        }
        ("/v1/messages", true) => {
            let mut events = vec![format!(
                "event: message_start\ndata: {}\n\n",
                serde_json::json!({"type":"message_start","message":{"id":"msg_mock","type":"message",
                    "role":"assistant","model":model,"content":[],
                    "usage":{"input_tokens":prompt_tokens,"output_tokens":1}}})
            )];
            for i in 0..chunks {
                let w = REPLY_WORDS[(i as usize) % REPLY_WORDS.len()];
                events.push(format!(
                    "event: content_block_delta\ndata: {}\n\n",
                    serde_json::json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":w}})
                ));
            }
            events.push(format!(
                "event: message_delta\ndata: {}\n\n",
                serde_json::json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},
                    "usage":{"output_tokens":completion_tokens}})
            ));
            events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".to_string());
            Ok(sse(events, chunk_delay))
        }
        _ => Ok(plain(StatusCode::NOT_FOUND, "unknown mock path")),
    }
}

fn reply_text(chunks: u64) -> String {
    (0..chunks)
        .map(|i| REPLY_WORDS[(i as usize) % REPLY_WORDS.len()])
        .collect()
}

fn plain(status: StatusCode, msg: &str) -> Response<Body> {
    let mut r = Response::new(Body::Left(Full::new(Bytes::from(msg.to_string()))));
    *r.status_mut() = status;
    r
}

fn json_resp(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Body::Left(Full::new(Bytes::from(
        serde_json::to_vec(v).unwrap_or_default(),
    ))));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn sse(events: Vec<String>, delay_ms: u64) -> Response<Body> {
    let (mut tx, body) = Channel::<Bytes>::new(4);
    tokio::spawn(async move {
        for e in events {
            if delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            }
            if tx.send(Frame::data(Bytes::from(e))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Body::Right(body));
    r.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert("cache-control", http::HeaderValue::from_static("no-cache"));
    r
}
