//! Stage 7 of a request's walk, first half: how many prompt tokens a request
//! carries, to reserve them before forwarding.
//!
//! OpenAI models are counted exactly with tiktoken's encodings (`o200k_base`
//! for the GPT-4o / o-series / GPT-4.1+ families, `cl100k_base` for GPT-4 and
//! GPT-3.5), which the `tiktoken-rs` crate compiles into the binary: nothing
//! is downloaded at run time. Chat requests add OpenAI's documented framing
//! (3 tokens per message, 1 per name, 3 to prime the reply).
//!
//! Other models (Anthropic, open models behind a gateway) use a documented
//! estimate: **one token per 3 bytes of UTF-8 text, rounded up, plus the
//! same framing**. Real tokenizers give about 3.5–4 characters per token for
//! English, and about one token per CJK character (3 bytes), so the
//! estimate errs high; the reservation is replaced by the gateway's real
//! usage when the response ends, so erring high only delays, never overspends.
//!
//! Cost: an encoding is parsed on first use (o200k: ~0.15–0.35 s, ~50 MB RSS): call
//! [`warm`] at start-up. Counting runs at ~6–11 MB/s (≈0.4 ms for a 4 KiB
//! prompt), capped per request by [`MAX_EXACT_BYTES`]; the estimate is a
//! byte count.

use std::cell::Cell;

use serde::Serialize;
use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// How a prompt count was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CountSource {
    /// The model's own tiktoken encoding.
    Tokenizer,
    /// The byte-based estimate.
    Estimate,
}

impl CountSource {
    /// `tokenizer` or `estimate` (decision record, policy input).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tokenizer => "tokenizer",
            Self::Estimate => "estimate",
        }
    }
}

/// A prompt's token count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PromptCount {
    /// Tokens.
    pub tokens: u64,
    /// Counted or estimated.
    pub source: CountSource,
}

/// Bytes per token assumed by the estimate.
pub const ESTIMATE_BYTES_PER_TOKEN: u64 = 3;

/// OpenAI's chat framing: tokens per message, per `name`, and reply priming.
const PER_MESSAGE: u64 = 3;
const PER_NAME: u64 = 1;
const REPLY_PRIMING: u64 = 3;

/// Bytes of prompt text one request may have tokenized exactly. BPE costs
/// ~100–170 µs per KiB on this machine, which would dominate the whole
/// pipeline (the benchmark's 16 KiB prompts cost ~3 ms of CPU each when
/// counted in full); past this cap the rest of the prompt is extrapolated
/// from the tokens-per-byte ratio of the part counted so far plus 10 % (the
/// estimate errs high) and reported as an estimate. The count only sizes the
/// reservation: usage reconciliation replaces it with the gateway's number.
pub const MAX_EXACT_BYTES: usize = 1024;

/// Exact-counting state of one request.
struct Exact {
    bpe: &'static CoreBPE,
    /// Bytes and tokens counted exactly so far.
    bytes: Cell<usize>,
    tokens: Cell<u64>,
    capped: Cell<bool>,
}

enum Counter {
    Bpe(Exact),
    Estimate,
}

impl Counter {
    fn for_model(model: &str) -> Self {
        use tiktoken_rs::tokenizer::{get_tokenizer, Tokenizer};
        let m = model.rsplit('/').next().unwrap_or(model); // "openai/gpt-4o" style routes
        match get_tokenizer(m) {
            Some(Tokenizer::O200kBase) => Self::bpe(tiktoken_rs::o200k_base_singleton()),
            Some(Tokenizer::Cl100kBase) => Self::bpe(tiktoken_rs::cl100k_base_singleton()),
            Some(Tokenizer::P50kBase | Tokenizer::P50kEdit) => {
                Self::bpe(tiktoken_rs::p50k_base_singleton())
            }
            Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => {
                Self::bpe(tiktoken_rs::r50k_base_singleton())
            }
            // Newer OpenAI families the crate does not list yet use o200k.
            _ if is_newer_openai(m) => Self::bpe(tiktoken_rs::o200k_base_singleton()),
            _ => Self::Estimate,
        }
    }

    fn bpe(bpe: &'static CoreBPE) -> Self {
        Self::Bpe(Exact {
            bpe,
            bytes: Cell::new(0),
            tokens: Cell::new(0),
            capped: Cell::new(false),
        })
    }

    fn source(&self) -> CountSource {
        match self {
            Self::Bpe(e) if !e.capped.get() => CountSource::Tokenizer,
            _ => CountSource::Estimate,
        }
    }

    fn count(&self, text: &str) -> u64 {
        let Self::Bpe(e) = self else {
            return estimate(text.len());
        };
        let left = MAX_EXACT_BYTES.saturating_sub(e.bytes.get());
        let mut cut = left.min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        // Ordinary encoding: text that spells a special token is user text, not a control token.
        let head = if cut > 0 {
            e.bpe.encode_ordinary(&text[..cut]).len() as u64
        } else {
            0
        };
        e.bytes.set(e.bytes.get() + cut);
        e.tokens.set(e.tokens.get() + head);
        let rest = text.len() - cut;
        if rest == 0 {
            return head;
        }
        e.capped.set(true);
        let (bytes, tokens) = (e.bytes.get() as u64, e.tokens.get());
        if bytes < 1024 {
            return head + estimate(rest);
        }
        // rest × tokens/bytes × 1.1, rounded up, in integers.
        head + (rest as u64 * tokens * 11).div_ceil(bytes * 10)
    }
}

fn estimate(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(ESTIMATE_BYTES_PER_TOKEN)
}

fn is_newer_openai(m: &str) -> bool {
    let rest = m.strip_prefix("gpt-").or_else(|| m.strip_prefix('o'));
    rest.and_then(|r| r.chars().next())
        .is_some_and(|c| c.is_ascii_digit())
}

/// Parse `o200k_base` (every current OpenAI model) now instead of on the
/// first request: ~0.15–0.35 s and ~50 MB of RSS. The legacy encodings (`cl100k_base` for
/// GPT-4/3.5, …) load on the first request for such a model.
pub fn warm() {
    let _ = tiktoken_rs::o200k_base_singleton();
}

/// Which source counting for `model` will use.
pub fn source_for(model: &str) -> CountSource {
    Counter::for_model(model).source()
}

/// Tokens of one text for `model`.
pub fn count_text(model: &str, text: &str) -> PromptCount {
    let c = Counter::for_model(model);
    PromptCount {
        tokens: c.count(text),
        source: c.source(),
    }
}

/// Prompt tokens of a parsed request body (after redaction), either dialect:
/// OpenAI `messages` / `input` / `prompt`, Anthropic `system` + `messages`,
/// and `tools` definitions. Text parts are counted; images and other binary
/// parts are not (their cost is not text). An unknown shape counts every
/// string in the body.
pub fn count_request(body: &Value) -> PromptCount {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("");
    let c = Counter::for_model(model);
    let mut tokens = 0u64;
    let mut known = false;
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        known = true;
        for m in msgs {
            tokens += PER_MESSAGE;
            if m.get("name").is_some() {
                tokens += PER_NAME;
            }
            if let Some(obj) = m.as_object() {
                for (k, v) in obj {
                    if k != "name" || v.is_string() {
                        tokens += strings(&c, v);
                    }
                }
            }
        }
        tokens += REPLY_PRIMING;
    }
    for key in [
        "system",
        "input",
        "prompt",
        "tools",
        "functions",
        "instructions",
    ] {
        if let Some(v) = body.get(key) {
            known = true;
            tokens += strings(&c, v);
        }
    }
    if !known {
        tokens = strings(&c, body);
    }
    PromptCount {
        tokens,
        source: c.source(),
    }
}

/// The completion allowance a request sets (`max_completion_tokens`,
/// `max_tokens`, `max_output_tokens`), if any.
pub fn max_output_tokens(body: &Value) -> Option<u64> {
    ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
}

/// Count every string value (and object key of tool schemas) under `v`.
/// Skips base64 image payloads, which are not prompt text.
fn strings(c: &Counter, v: &Value) -> u64 {
    match v {
        Value::String(s) => {
            if s.starts_with("data:") && s.len() > 256 {
                0
            } else {
                c.count(s)
            }
        }
        Value::Array(a) => a.iter().map(|x| strings(c, x)).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "image_url" | "source" | "type" | "role"))
            .map(|(_, x)| strings(c, x))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, reason = "tests fail loudly")]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tiktoken_counts_known_strings() {
        // Known cl100k / o200k counts for a fixed sentence.
        let s = "hello world";
        assert_eq!(
            count_text("gpt-4", s),
            PromptCount {
                tokens: 2,
                source: CountSource::Tokenizer
            }
        );
        assert_eq!(count_text("gpt-4o-mini", s).tokens, 2);
        assert_eq!(count_text("gpt-5-nano", s).source, CountSource::Tokenizer);
        assert_eq!(count_text("o4-mini", s).source, CountSource::Tokenizer);
        // Special-token text is counted as ordinary text, not rejected.
        assert!(count_text("gpt-4o", "<|endoftext|>").tokens > 1);
    }

    #[test]
    fn huge_prompt_is_estimated_past_the_cap() {
        let big = "word ".repeat(MAX_EXACT_BYTES / 5 * 3);
        let c = count_text("gpt-4o", &big);
        assert_eq!(c.source, CountSource::Estimate);
        // Extrapolated from the exact part: within +10 % (+1) of the truth.
        let truth = tiktoken_rs::o200k_base_singleton()
            .encode_ordinary(&big)
            .len() as u64;
        assert!(
            c.tokens >= truth && c.tokens <= truth * 11 / 10 + 1,
            "{} vs {truth}",
            c.tokens
        );
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "user", "content": "hello"}, {"role": "user", "content": big}]});
        assert_eq!(count_request(&body).source, CountSource::Estimate);
    }

    #[test]
    fn estimate_for_other_models() {
        let c = count_text("claude-sonnet-4-5", "abcdefg");
        assert_eq!(
            c,
            PromptCount {
                tokens: 3,
                source: CountSource::Estimate
            }
        );
        assert_eq!(source_for("llama-3-70b"), CountSource::Estimate);
        // The estimate errs high against a real tokenizer on English text.
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(50);
        assert!(count_text("claude-3-5-haiku", &text).tokens > count_text("gpt-4o", &text).tokens);
    }

    #[test]
    fn chat_request_framing() {
        let body = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello world"}
        ], "max_tokens": 50});
        let c = count_request(&body);
        // Content, role names (1 token each) and the framing, as in OpenAI's cookbook.
        let content = count_text("gpt-4o", "You are terse.").tokens + 2 + 2;
        assert_eq!(c.tokens, content + 2 * PER_MESSAGE + REPLY_PRIMING, "{c:?}");
        assert_eq!(max_output_tokens(&body), Some(50));
        let anth = json!({"model": "claude-sonnet-4-5", "system": "be brief", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"},
              {"type": "image", "source": {"type": "base64", "data": "AAAA"}}]}]});
        let c = count_request(&anth);
        assert_eq!(c.source, CountSource::Estimate);
        // "be brief" 8 B → 3, "user" 4 B → 2, "hi" → 1; the image is not text.
        assert_eq!(c.tokens, 3 + 2 + 1 + PER_MESSAGE + REPLY_PRIMING);
        assert_eq!(max_output_tokens(&anth), None);
        assert_eq!(
            count_request(&json!({"foo": ["abc", {"x": "abcd"}]})).tokens,
            1 + 2
        );
    }
}
