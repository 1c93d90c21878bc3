//! A validating JSON walker that reports the byte span of every string
//! (values and keys) without building a DOM.
//!
//! It accepts exactly what `serde_json` accepts (RFC 8259, UTF-8, no lone
//! surrogates, nesting at most [`MAX_DEPTH`]) and additionally refuses
//! duplicate keys in one object: a gateway that keeps the *other* copy would
//! see a value we did not scan. The property tests check the acceptance
//! against `serde_json` on generated inputs.

use std::borrow::Cow;
use std::collections::HashSet;

use super::simd::next_set;

/// Deepest nesting accepted (serde_json's default recursion limit).
pub(crate) const MAX_DEPTH: usize = 128;

/// One step of the path from the document root to a string.
#[derive(Debug, Clone)]
pub(crate) enum Seg {
    /// Object member: raw span of the key's content (inside the quotes),
    /// whether it holds escapes, and whether a finding was made in the key
    /// (such a key is never printed in a path).
    Key {
        start: usize,
        end: usize,
        escaped: bool,
        sensitive: bool,
    },
    /// Array element.
    Index(usize),
}

/// Receives every string of the document in order.
pub(crate) trait Visitor {
    /// `start..end` is the raw content between the quotes. Returns true when
    /// the string held a finding (used to keep sensitive keys out of paths).
    fn string(
        &mut self,
        start: usize,
        end: usize,
        escaped: bool,
        is_key: bool,
        path: &[Seg],
    ) -> bool;
}

/// Why a body is not acceptable JSON.
#[derive(Debug)]
pub(crate) enum JsonError {
    Syntax(String),
    Duplicate(String),
}

/// Walk `b` (which the caller has checked is UTF-8), calling `v` for every string.
#[cfg(test)]
pub(crate) fn walk<V: Visitor>(b: &[u8], v: &mut V) -> Result<(), JsonError> {
    let (mut special, mut stops) = (Vec::new(), Vec::new());
    super::simd::body_masks(b, &mut special, &mut stops);
    walk_with(b, &special, v)
}

/// [`walk`] given the special-byte mask of `b` (`simd::body_masks`).
pub(crate) fn walk_with<V: Visitor>(b: &[u8], special: &[u64], v: &mut V) -> Result<(), JsonError> {
    let mut w = Walker {
        b,
        i: 0,
        path: Vec::new(),
        special,
    };
    w.ws();
    w.value(v, 0)?;
    w.ws();
    if w.i != b.len() {
        return Err(w.err("trailing characters after the JSON value"));
    }
    Ok(())
}

struct Walker<'a> {
    b: &'a [u8],
    i: usize,
    path: Vec<Seg>,
    /// Where the `"`, `\` and control bytes of `b` are (`simd::body_masks`).
    special: &'a [u64],
}

/// Keys seen so far in one object; a linear scan while small.
enum KeySet<'a> {
    Small(Vec<Cow<'a, str>>),
    Large(HashSet<Cow<'a, str>>),
}

impl<'a> KeySet<'a> {
    /// Insert; false if the key was already there.
    fn insert(&mut self, k: Cow<'a, str>) -> bool {
        match self {
            KeySet::Small(v) => {
                if v.contains(&k) {
                    return false;
                }
                v.push(k);
                if v.len() > 16 {
                    let set: HashSet<Cow<'a, str>> = v.drain(..).collect();
                    *self = KeySet::Large(set);
                }
                true
            }
            KeySet::Large(s) => s.insert(k),
        }
    }
}

impl<'a> Walker<'a> {
    fn err(&self, what: &str) -> JsonError {
        JsonError::Syntax(format!("{what} at byte {}", self.i))
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn value<V: Visitor>(&mut self, v: &mut V, depth: usize) -> Result<(), JsonError> {
        match self.b.get(self.i) {
            Some(b'{') => self.object(v, depth + 1),
            Some(b'[') => self.array(v, depth + 1),
            Some(b'"') => {
                let (s, e, esc) = self.string()?;
                v.string(s, e, esc, false, &self.path);
                Ok(())
            }
            Some(b't') => self.lit(b"true"),
            Some(b'f') => self.lit(b"false"),
            Some(b'n') => self.lit(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("expected a JSON value")),
            None => Err(self.err("unexpected end of input")),
        }
    }

    fn lit(&mut self, word: &[u8]) -> Result<(), JsonError> {
        if self.b.get(self.i..self.i + word.len()) == Some(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("invalid literal"))
        }
    }

    fn digits(&mut self) -> usize {
        let st = self.i;
        while matches!(self.b.get(self.i), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        self.i - st
    }

    fn number(&mut self) -> Result<(), JsonError> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        match self.b.get(self.i) {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.b.get(self.i) == Some(&b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    /// Parse a string at `self.i` (an opening quote); returns the content span.
    fn string(&mut self) -> Result<(usize, usize, bool), JsonError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = next_set(self.special, self.i).map_or(self.b.len(), |k| k.min(self.b.len()));
            match self.b.get(self.i) {
                None => return Err(self.err("unterminated string")),
                Some(b'"') => {
                    let end = self.i;
                    self.i += 1;
                    return Ok((start, end, escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.escape()?;
                }
                Some(_) => return Err(self.err("control character in string")),
            }
        }
    }

    fn hex4(&self, at: usize) -> Option<u32> {
        let h = self.b.get(at..at + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        u32::from_str_radix(s, 16).ok()
    }

    /// Validate one escape at `self.i` (a backslash) and step over it.
    fn escape(&mut self) -> Result<(), JsonError> {
        match self.b.get(self.i + 1) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.i += 2;
                Ok(())
            }
            Some(b'u') => {
                let Some(cp) = self.hex4(self.i + 2) else {
                    return Err(self.err("invalid \\u escape"));
                };
                self.i += 6;
                if (0xDC00..0xE000).contains(&cp) {
                    return Err(self.err("lone trailing surrogate in \\u escape"));
                }
                if (0xD800..0xDC00).contains(&cp) {
                    let lo = if self.b.get(self.i..self.i + 2) == Some(b"\\u") {
                        self.hex4(self.i + 2)
                    } else {
                        None
                    };
                    match lo {
                        Some(lo) if (0xDC00..0xE000).contains(&lo) => self.i += 6,
                        _ => return Err(self.err("lone leading surrogate in \\u escape")),
                    }
                }
                Ok(())
            }
            _ => Err(self.err("invalid escape")),
        }
    }

    fn object<V: Visitor>(&mut self, v: &mut V, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(());
        }
        let mut keys = KeySet::Small(Vec::new());
        loop {
            if self.b.get(self.i) != Some(&b'"') {
                return Err(self.err("expected a string key"));
            }
            let (s, e, esc) = self.string()?;
            let key: Cow<'a, str> = if esc {
                Cow::Owned(decode_string(&self.b[s..e]))
            } else {
                Cow::Borrowed(std::str::from_utf8(&self.b[s..e]).unwrap_or(""))
            };
            let sensitive = v.string(s, e, esc, true, &self.path);
            if !keys.insert(key) {
                let shown = if sensitive {
                    "[REDACTED]".to_string()
                } else {
                    render_key(self.b, s, e, esc)
                };
                return Err(JsonError::Duplicate(format!(
                    "duplicate key \"{shown}\" in object at {}",
                    render_path(self.b, &self.path)
                )));
            }
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return Err(self.err("expected ':'"));
            }
            self.i += 1;
            self.ws();
            self.path.push(Seg::Key {
                start: s,
                end: e,
                escaped: esc,
                sensitive,
            });
            let r = self.value(v, depth);
            self.path.pop();
            r?;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array<V: Visitor>(&mut self, v: &mut V, depth: usize) -> Result<(), JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nesting too deep"));
        }
        self.i += 1;
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Ok(());
        }
        let mut n = 0usize;
        loop {
            self.path.push(Seg::Index(n));
            let r = self.value(v, depth);
            self.path.pop();
            r?;
            n += 1;
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }
}

/// Decode the content of a JSON string that the walker has validated.
/// Invalid sequences (which a validated string cannot hold) decode to U+FFFD.
pub(crate) fn decode_string(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len());
    for (c, _, _) in decode_units(raw, 0) {
        out.push(c);
    }
    out
}

/// Iterate the characters of a validated JSON string's content with the raw
/// span (offset by `base`) each came from; an escape is one unit.
pub(crate) fn decode_units(
    raw: &[u8],
    base: usize,
) -> impl Iterator<Item = (char, usize, usize)> + '_ {
    let text = std::str::from_utf8(raw).unwrap_or("");
    let mut i = 0usize;
    std::iter::from_fn(move || {
        let b = text.as_bytes();
        if i >= b.len() {
            return None;
        }
        let st = i;
        if b[i] != b'\\' {
            let c = text[i..].chars().next()?;
            i += c.len_utf8();
            return Some((c, base + st, base + i));
        }
        let c = match b.get(i + 1) {
            Some(b'n') => '\n',
            Some(b't') => '\t',
            Some(b'r') => '\r',
            Some(b'b') => '\u{8}',
            Some(b'f') => '\u{c}',
            Some(b'u') => {
                let hi = hex_at(b, i + 2).unwrap_or(0xFFFD);
                if (0xD800..0xDC00).contains(&hi) && b.get(i + 6..i + 8) == Some(b"\\u") {
                    let lo = hex_at(b, i + 8).unwrap_or(0);
                    if (0xDC00..0xE000).contains(&lo) {
                        i += 12;
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        return Some((
                            char::from_u32(cp).unwrap_or('\u{FFFD}'),
                            base + st,
                            base + i,
                        ));
                    }
                }
                i += 6;
                return Some((
                    char::from_u32(hi).unwrap_or('\u{FFFD}'),
                    base + st,
                    base + i.min(b.len()),
                ));
            }
            Some(&other) => other as char,
            None => '\\',
        };
        i = (i + 2).min(b.len());
        Some((c, base + st, base + i))
    })
}

fn hex_at(b: &[u8], at: usize) -> Option<u32> {
    let h = b.get(at..at + 4)?;
    let s = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(s, 16).ok()
}

fn render_key(b: &[u8], s: usize, e: usize, escaped: bool) -> String {
    if escaped {
        decode_string(&b[s..e])
    } else {
        String::from_utf8_lossy(&b[s..e]).into_owned()
    }
}

/// Render a path like `$.messages[0].content`; keys that held a finding
/// are shown as `[*]` so a path never carries a detected value.
pub(crate) fn render_path(b: &[u8], path: &[Seg]) -> String {
    let mut out = String::from("$");
    for seg in path {
        match seg {
            Seg::Index(n) => {
                out.push('[');
                out.push_str(&n.to_string());
                out.push(']');
            }
            Seg::Key {
                sensitive: true, ..
            } => out.push_str("[*]"),
            Seg::Key {
                start,
                end,
                escaped,
                ..
            } => {
                let k = render_key(b, *start, *end, *escaped);
                let plain = !k.is_empty()
                    && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                    && !k.as_bytes()[0].is_ascii_digit();
                if plain {
                    out.push('.');
                    out.push_str(&k);
                } else {
                    out.push('[');
                    out.push_str(&serde_json::Value::String(k).to_string());
                    out.push(']');
                }
            }
        }
    }
    out
}
