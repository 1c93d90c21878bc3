//! "See what the model will see": turn the raw bytes of one string into the
//! text the detectors run on, keeping for every byte of that text the raw
//! span it came from, so a match maps back to the exact bytes to replace.
//!
//! Steps, in one pass: JSON escapes decoded (`\u0040` is `@`); escapes one
//! level down decoded too (`\\u0040`, `\\n` — JSON inside a JSON string, as
//! in tool-call arguments); default-ignorable characters (zero-width space
//! and joiners, soft hyphen, bidi controls, variation selectors, BOM) dropped;
//! every other non-ASCII character replaced by its NFKC form (full-width
//! digits and letters, ligatures, mathematical alphanumerics become ASCII).
//!
//! NFKC is applied per character: canonical composition across characters is
//! not done. The detectors look for ASCII shapes, which that does not change.

use unicode_normalization::UnicodeNormalization;

/// Normalised text and, for each of its bytes, the raw span `(start, end)`
/// in the body it came from.
#[derive(Debug, Default)]
pub(crate) struct Norm {
    pub text: String,
    pub map: Vec<(u32, u32)>,
    units: Vec<(char, u32, u32)>,
}

impl Norm {
    /// Raw body span of the normalised byte range `s..e` (`s < e`).
    pub fn raw_span(&self, s: usize, e: usize) -> (usize, usize) {
        let a = self.map.get(s).map_or(0, |m| m.0);
        let b = self.map.get(e.saturating_sub(1)).map_or(a, |m| m.1);
        (a as usize, b as usize)
    }
}

/// True for Unicode default-ignorable code points (rendered as nothing).
pub(crate) fn is_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5
        | 0x180B..=0x180F | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
        | 0x3164 | 0xFE00..=0xFE0F | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0000..=0xE0FFF)
}

/// Whether `raw` needs the slow path (anything but plain ASCII, or escapes).
#[inline]
pub(crate) fn needs_normalizing(raw: &[u8]) -> bool {
    !raw.is_ascii() || memchr::memchr(b'\\', raw).is_some()
}

/// Normalise `raw` (at body offset `base`) into `out`. `json` says whether
/// `raw` is the content of a JSON string (first-level escapes to decode).
pub(crate) fn normalize(raw: &[u8], base: usize, json: bool, out: &mut Norm) {
    out.text.clear();
    out.map.clear();
    out.units.clear();
    if json {
        for (c, s, e) in super::json::decode_units(raw, base) {
            out.units.push((c, s as u32, e as u32));
        }
    } else {
        let text = String::from_utf8_lossy(raw);
        for (i, c) in text.char_indices() {
            let s = base + i;
            out.units.push((c, s as u32, (s + c.len_utf8()) as u32));
        }
    }
    let units = std::mem::take(&mut out.units);
    let mut i = 0usize;
    while i < units.len() {
        let (mut c, s, mut e) = units[i];
        i += 1;
        if c == '\\' {
            if let Some((nc, used)) = nested_escape(&units[i..]) {
                c = nc;
                e = units[i + used - 1].2;
                i += used;
            }
        }
        push_char(out, c, s, e);
    }
    out.units = units;
}

fn push_char(out: &mut Norm, c: char, s: u32, e: u32) {
    if c.is_ascii() {
        out.text.push(c);
        out.map.push((s, e));
        return;
    }
    if is_ignorable(c) {
        return;
    }
    for n in std::iter::once(c).nfkc() {
        if is_ignorable(n) {
            continue;
        }
        let before = out.text.len();
        out.text.push(n);
        for _ in before..out.text.len() {
            out.map.push((s, e));
        }
    }
}

fn hex4(u: &[(char, u32, u32)]) -> Option<u32> {
    if u.len() < 4 {
        return None;
    }
    let mut v = 0u32;
    for &(c, _, _) in &u[..4] {
        v = v * 16 + c.to_digit(16)?;
    }
    Some(v)
}

/// A backslash escape in already-decoded text (JSON inside a JSON string):
/// returns the character and how many units after the backslash it used.
/// `\"` is deliberately left alone so a replacement never removes a quote of
/// the inner document.
fn nested_escape(u: &[(char, u32, u32)]) -> Option<(char, usize)> {
    match u.first()?.0 {
        'n' => Some(('\n', 1)),
        't' => Some(('\t', 1)),
        'r' => Some(('\r', 1)),
        '/' => Some(('/', 1)),
        'u' => {
            let hi = hex4(&u[1..])?;
            if (0xD800..0xDC00).contains(&hi) {
                if u.get(5).map(|x| x.0) == Some('\\') && u.get(6).map(|x| x.0) == Some('u') {
                    let lo = hex4(u.get(7..)?)?;
                    if (0xDC00..0xE000).contains(&lo) {
                        let cp = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        return Some((char::from_u32(cp)?, 11));
                    }
                }
                return None;
            }
            Some((char::from_u32(hi)?, 5))
        }
        _ => None,
    }
}
