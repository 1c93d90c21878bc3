//! Request-body `Content-Encoding`: gzip, deflate, br, zstd, decoded under
//! the same size bound as a plain body. Anything else is refused; a
//! compressed body is never forwarded unscanned.

use std::io::Read;

use super::Refusal;

/// zstd frames may ask for a window up to 2^31; 2^23 (8 MiB) bounds the
/// decoder's memory and covers what any client sends for a request body.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Decode `body` per the `Content-Encoding` header value (codings applied in
/// order, so decoded in reverse). `Ok(None)`: nothing to decode.
pub(crate) fn decode(
    body: &[u8],
    encoding: Option<&str>,
    max: usize,
) -> Result<Option<Vec<u8>>, Refusal> {
    let Some(enc) = encoding else {
        return Ok(None);
    };
    let codings: Vec<String> = enc
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    if codings.is_empty() {
        return Ok(None);
    }
    if codings.len() > 4 {
        return Err(Refusal::UnsupportedEncoding(format!(
            "{} stacked content codings (at most 4 are decoded)",
            codings.len()
        )));
    }
    let mut cur: Vec<u8> = body.to_vec();
    for c in codings.iter().rev() {
        cur = decode_one(&cur, c, max)?;
    }
    Ok(Some(cur))
}

fn decode_one(input: &[u8], coding: &str, max: usize) -> Result<Vec<u8>, Refusal> {
    let conv = |r: Result<Vec<u8>, Bounded>| {
        r.map_err(|b| match b {
            Bounded::TooLarge => Refusal::TooLarge,
            Bounded::Io(e) => {
                Refusal::UnsupportedEncoding(format!("{coding} body does not decode: {e}"))
            }
        })
    };
    match coding {
        "gzip" | "x-gzip" => conv(bounded(flate2::read::MultiGzDecoder::new(input), max)),
        "deflate" => {
            // HTTP "deflate" is zlib-wrapped; some clients send raw deflate.
            match bounded(flate2::read::ZlibDecoder::new(input), max) {
                Err(Bounded::Io(_)) => conv(bounded(flate2::read::DeflateDecoder::new(input), max)),
                r => conv(r),
            }
        }
        "br" => conv(bounded(brotli::Decompressor::new(input, 4096), max)),
        "zstd" => {
            let mut d = match zstd::stream::read::Decoder::new(input) {
                Ok(d) => d,
                Err(e) => return conv(Err(Bounded::Io(e))),
            };
            if let Err(e) = d.window_log_max(ZSTD_WINDOW_LOG_MAX) {
                return conv(Err(Bounded::Io(e)));
            }
            conv(bounded(d, max))
        }
        other => Err(Refusal::UnsupportedEncoding(format!(
            "content-encoding {other:?} is not supported (gzip, deflate, br, zstd)"
        ))),
    }
}

/// Reading failed, or the output would pass the bound.
enum Bounded {
    Io(std::io::Error),
    TooLarge,
}

fn bounded<R: Read>(r: R, max: usize) -> Result<Vec<u8>, Bounded> {
    let mut out = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    r.take(limit).read_to_end(&mut out).map_err(Bounded::Io)?;
    if out.len() > max {
        return Err(Bounded::TooLarge);
    }
    Ok(out)
}
