//! A small HTTP/1.1 client for tests: keep-alive connections, streamed
//! responses, and raw bytes for malformed-request tests.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to the proxy.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
}

/// A complete response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Resp {
    /// Body parsed as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Conn {
    /// Open a connection.
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender })
    }

    /// Send a request and return the streaming response.
    pub async fn send(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
        let body: Bytes = body.into();
        let mut b = Request::builder()
            .method(method)
            .uri(path)
            .header("host", host);
        let mut has_ctype = false;
        for (k, v) in headers {
            has_ctype |= k.eq_ignore_ascii_case("content-type");
            b = b.header(*k, *v);
        }
        if !has_ctype && !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        let req = b.body(Full::new(body))?;
        self.sender.ready().await?;
        Ok(self.sender.send_request(req).await?)
    }

    /// Send a request and read the whole response (bounded by 30 s).
    pub async fn request(
        &mut self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Resp> {
        let fut = async {
            let r = self.send(method, host, path, headers, body).await?;
            let status = r.status();
            let headers = r.headers().clone();
            let body = r.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>(Resp {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(30), fut).await?
    }
}

/// One request on a fresh connection.
pub async fn post(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> anyhow::Result<Resp> {
    Conn::open(addr)
        .await?
        .request("POST", host, path, headers, body)
        .await
}

/// Write raw bytes and read what comes back until the peer closes or 5 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(bytes).await?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // One response is enough for these tests.
                if response_complete(&out) {
                    break;
                }
            }
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn response_complete(b: &[u8]) -> bool {
    let s = String::from_utf8_lossy(b);
    let Some(end) = s.find("\r\n\r\n") else {
        return false;
    };
    let head = s[..end].to_ascii_lowercase();
    match head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        Some(n) => b.len() >= end + 4 + n,
        None => false,
    }
}

/// A chat completion request body with a prompt of about `prompt_bytes` bytes.
pub fn chat_body(model: &str, prompt_bytes: usize, stream: bool) -> String {
    let words = "the quick brown fox jumps over the lazy dog ";
    let mut p = String::with_capacity(prompt_bytes + words.len());
    while p.len() < prompt_bytes {
        p.push_str(words);
    }
    p.truncate(prompt_bytes);
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": p}
        ]
    })
    .to_string()
}
