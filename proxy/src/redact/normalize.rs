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

use std::hint::select_unpredictable;

use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

use super::simd::{copy_bits, next_set, stop_mask};

/// One stretch of raw bytes replaced whole in the normalised text (an
/// escape, a character NFKC changes, a dropped one: `norm_len` 0). The
/// text between units is the raw text, byte for byte, so only the units
/// are recorded.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    norm: u32,
    norm_len: u32,
    raw: u32,
    raw_len: u32,
}

/// Normalised text of one string plus the map back to raw body offsets.
#[derive(Debug, Default)]
pub(crate) struct Norm {
    pub text: String,
    /// The replaced units, by position.
    units: Vec<Unit>,
    /// Body offset of the raw string (where the text before the first unit
    /// starts).
    base: usize,
    /// Where the normaliser has work in the raw string (`simd::stop_mask`,
    /// or copied from the body's mask by `normalize_if_needed`).
    stops: Vec<u64>,
}

impl Norm {
    /// The raw span of the normalised byte at `at`: its unit's whole raw
    /// span, or the one raw byte it was copied from. `cur` is where the
    /// previous lookup ended; lookups at rising offsets (the sorted hits of
    /// one string) walk on from there instead of searching the whole map.
    fn raw_of(&self, at: usize, cur: &mut usize) -> (usize, usize) {
        let by = |i: usize| self.units.get(i).is_some_and(|u| u.norm as usize <= at);
        let mut i = *cur;
        if !by(i) {
            // behind the cursor (or no cursor yet): search
            i = self.units.partition_point(|u| u.norm as usize <= at);
            let Some(last) = i.checked_sub(1) else {
                // before the first unit
                return (self.base + at, self.base + at + 1);
            };
            i = last;
        }
        while by(i + 1) {
            i += 1;
        }
        *cur = i;
        let Some(u) = self.units.get(i) else {
            return (self.base + at, self.base + at + 1);
        };
        let (norm_end, raw_end) = ((u.norm + u.norm_len) as usize, (u.raw + u.raw_len) as usize);
        if at < norm_end {
            (u.raw as usize, raw_end)
        } else {
            let r = raw_end + (at - norm_end);
            (r, r + 1)
        }
    }

    /// Raw body span of the normalised byte range `s..e` (`s < e`).
    #[cfg(test)]
    pub fn raw_span(&self, s: usize, e: usize) -> (usize, usize) {
        self.raw_span_from(s, e, &mut 0)
    }

    /// [`Norm::raw_span`] with a cursor: for spans asked for in rising
    /// order, `cur` (start at 0) makes the lookups one walk over the map.
    pub fn raw_span_from(&self, s: usize, e: usize, cur: &mut usize) -> (usize, usize) {
        let a = self.raw_of(s, cur).0;
        let b = self.raw_of(e.saturating_sub(1).max(s), cur).1;
        (a, b.max(a))
    }

    /// Record the raw bytes `raw..raw + raw_len` as replaced by what was
    /// pushed to the text since `n`.
    #[inline]
    fn unit(&mut self, n: usize, raw: usize, raw_len: usize) {
        self.units.push(Unit {
            norm: n as u32,
            norm_len: (self.text.len() - n) as u32,
            raw: raw as u32,
            raw_len: raw_len as u32,
        });
    }

    /// [`Norm::push_unit`] for an ASCII character (never ignorable, its
    /// own NFKC form) from `raw_len` raw bytes at `raw`.
    #[inline]
    fn push_ascii_unit(&mut self, c: u8, raw: usize, raw_len: usize) {
        let n = self.text.len();
        self.text.push(char::from(c));
        self.unit(n, raw, raw_len);
    }

    fn push_unit(&mut self, c: char, raw: usize, raw_end: usize) {
        let n = self.text.len();
        if c.is_ascii() {
            self.text.push(c);
        } else if !is_ignorable(c) {
            for x in std::iter::once(c).nfkc() {
                if !is_ignorable(x) {
                    self.text.push(x);
                }
            }
        }
        self.unit(n, raw, raw_end - raw);
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

/// A non-ASCII character that normalisation leaves as it is. Common
/// ranges are answered without the table lookup.
#[inline]
fn nfkc_stable(c: char) -> bool {
    let u = c as u32;
    // Latin-1 letters, Latin Extended-A, Greek/Cyrillic letters, quotes and
    // dashes, CJK ideographs, Hangul syllables
    if matches!(u, 0xC0..=0xFF | 0x100..=0x131 | 0x134..=0x13E | 0x141..=0x148 | 0x14A..=0x17E
        | 0x391..=0x3C9 | 0x410..=0x44F | 0x2010 | 0x2013..=0x2016 | 0x2018..=0x2023 | 0x4E00..=0x9FFF | 0xAC00..=0xD7A3)
    {
        return true;
    }
    !is_ignorable(c) && is_nfkc_quick(std::iter::once(c)) != IsNormalized::No
}

/// Normalise `raw` (at body offset `base`) into `out` if it needs it: if it
/// holds an escape, or a character that normalisation would change or
/// drop. Text made only of ASCII and characters NFKC keeps (accented
/// letters, quotes, dashes, CJK) is scanned in place: then `false`.
///
/// `body_stops` is the stop mask of the whole body `raw` is part of (at
/// `base`), if the caller has it ([`super::simd::body_masks`]).
pub(crate) fn normalize_if_needed(
    raw: &str,
    base: usize,
    json: bool,
    body_stops: Option<&[u64]>,
    out: &mut Norm,
) -> bool {
    let mut stops = std::mem::take(&mut out.stops);
    match body_stops {
        Some(m) => copy_bits(m, base, raw.len(), &mut stops),
        None => stop_mask(raw.as_bytes(), &mut stops),
    }
    let need = needs(raw, &stops);
    if need {
        normalize_with(raw, base, json, &stops, out);
    }
    out.stops = stops;
    need
}

/// Whether a stop in `stops` is an escape or a character NFKC changes.
fn needs(raw: &str, stops: &[u64]) -> bool {
    let b = raw.as_bytes();
    let mut i = 0;
    while let Some(k) = next_set(stops, i).filter(|&k| k < b.len()) {
        if b[k] == b'\\' {
            return true;
        }
        match raw.get(k..).and_then(|t| t.chars().next()) {
            Some(c) if nfkc_stable(c) => i = k + c.len_utf8(),
            _ => return true,
        }
    }
    false
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let h = b.get(at..at + 4)?;
    if !h.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
}

/// `\uXXXX` (with a following low surrogate if XXXX is a high one) at `at`
/// (pointing at the `u`, `bs` bytes of backslash before each escape).
fn unicode_at(b: &[u8], at: usize, bs: usize) -> Option<(char, usize)> {
    let hi = hex4(b, at + 1)?;
    let mut end = at + 5;
    let cp = if (0xD800..0xDC00).contains(&hi) {
        let lo_at = end + bs;
        if b.get(end..lo_at)
            .is_some_and(|x| x.iter().all(|&c| c == b'\\'))
            && b.get(lo_at) == Some(&b'u')
        {
            let lo = hex4(b, lo_at + 1)?;
            if !(0xDC00..0xE000).contains(&lo) {
                return None;
            }
            end = lo_at + 5;
            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
        } else {
            return None;
        }
    } else {
        hi
    };
    Some((char::from_u32(cp)?, end))
}

/// Normalise `raw` (at body offset `base`) into `out`. `json` says whether
/// `raw` is the content of a JSON string (first-level escapes to decode).
/// Escapes one level down (`\\u0040` in JSON, `\u0040` in text) are decoded
/// too, except `\"` so a replacement never removes an inner quote.
pub(crate) fn normalize(text: &str, base: usize, json: bool, out: &mut Norm) {
    let mut stops = std::mem::take(&mut out.stops);
    stop_mask(text.as_bytes(), &mut stops);
    normalize_with(text, base, json, &stops, out);
    out.stops = stops;
}

/// [`normalize`] given the string's stop mask.
fn normalize_with(text: &str, base: usize, json: bool, stops: &[u64], out: &mut Norm) {
    normalize_steps(text, base, json, stops, out, true);
}

/// [`normalize_with`]; `steps` says whether stretches of one-character
/// escapes may take [`simple_stretch`] (the tests compare both ways).
fn normalize_steps(
    text: &str,
    base: usize,
    json: bool,
    stops: &[u64],
    out: &mut Norm,
    steps: bool,
) {
    out.text.clear();
    out.units.clear();
    out.base = base;
    out.text.reserve(text.len());
    let b = text.as_bytes();
    // start of the stretch copied unchanged (ASCII and NFKC-stable characters)
    let mut run = 0usize;
    let mut i = 0usize;
    loop {
        if steps && json && run == i {
            i = simple_stretch(b, base, i, stops, out);
            run = i;
        }
        i = match next_set(stops, i) {
            Some(k) if k < b.len() => k,
            _ => break,
        };
        if b[i] == b'\\' {
            out.text.push_str(text.get(run..i).unwrap_or_default());
            // the common one-level escapes (newlines above all), without
            // the general decoder: one ASCII byte for two raw ones
            if let Some(d) = json
                .then(|| b.get(i + 1).and_then(|&c| simple_json(c)))
                .flatten()
            {
                out.push_ascii_unit(d, base + i, 2);
                i += 2;
                run = i;
                continue;
            }
            let (c, mut end) = escape_at(b, i, json);
            // an escape is ASCII, so `end` is a boundary; stay safe if not
            while end < b.len() && !text.is_char_boundary(end) {
                end += 1;
            }
            out.push_unit(c, base + i, base + end);
            i = end;
            run = i;
            continue;
        }
        let Some(c) = text.get(i..).and_then(|t| t.chars().next()) else {
            break;
        };
        let end = i + c.len_utf8();
        if !nfkc_stable(c) {
            out.text.push_str(text.get(run..i).unwrap_or_default());
            out.push_unit(c, base + i, base + end);
            run = end;
        }
        i = end;
    }
    out.text.push_str(text.get(run..).unwrap_or_default());
}

/// Bytes a step of [`simple_stretch`] may read: 64 from its position, and
/// the byte after an escape at the last of them.
const STEP_READ: usize = 66;

/// Bytes one round of [`simple_stretch`]'s steps covers at most. The steps
/// are entered again after every stop of another kind (text a client sent
/// as ASCII only has a `\u` escape for every other character), so each
/// round's set-up is kept to the round's own length.
const ROUND: usize = 512;

/// Each byte `c` of a one-character JSON escape `\c` ([`simple_json`]) and
/// the byte it stands for; 0 for the others.
const SIMPLE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = match simple_json(c as u8) {
            Some(d) => d,
            None => 0,
        };
        c += 1;
    }
    t
};

/// Copy `b` from `i` into `out` for as long as its only stops are
/// one-character JSON escapes (the newlines of prose, above all), and
/// return where it stopped: at a stop of another kind, or where fewer than
/// [`STEP_READ`] bytes are left. Each step goes to the next escape or to
/// the end of a mask word, whichever comes first: it copies 64 bytes,
/// writes the escape's byte over its backslash if there is one, and moves
/// on from after it (the next step's copy overwrites the rest). One step
/// per escape or word, and no branch on where the escapes are. (Stepping
/// from escape to escape and copying the stretches between them lost half
/// its time to mispredicted branches on prose with newlines.)
fn simple_stretch(b: &[u8], base: usize, i0: usize, stops: &[u64], out: &mut Norm) -> usize {
    let n = b.len();
    // reads stay below `n`, and both stop words read are in `stops`
    if i0 + STEP_READ > n || stops.len() < n.div_ceil(64) {
        return i0;
    }
    // Nothing to step over unless the next stop is such an escape: the
    // caller copies up to any other (and is back here after each one).
    match next_set(stops, i0) {
        Some(k) if b.get(k + 1).is_some_and(|&c| SIMPLE[usize::from(c)] != 0) => {}
        _ => return i0,
    }
    let mut bytes = std::mem::take(&mut out.text).into_bytes();
    let o0 = bytes.len();
    // every write lands below `o + 65`, and `o - o0 <= i - i0`
    bytes.reserve(n - i0);
    let (src, dst) = (b.as_ptr(), bytes.as_mut_ptr());
    let (mut i, mut o) = (i0, o0);
    loop {
        // A unit is written at every step and kept for an escape: room for
        // one per stop of this round, and the one written after the last.
        // Counted a round at a time, so a visit costs what it steps over,
        // not the rest of the string.
        let lim = (i + ROUND).min(n);
        let most: u32 = stops
            .get(i / 64..lim.div_ceil(64))
            .unwrap_or_default()
            .iter()
            .map(|w| w.count_ones())
            .sum();
        out.units.reserve(most as usize + 1);
        let (units, u0) = (out.units.as_mut_ptr(), out.units.len());
        // SAFETY: as for `stretch_steps`, with `lim <= n` as its length:
        // `b` holds `lim` bytes, `stops` the words checked above, `dst` the
        // room reserved above, `units` the room just reserved
        let (next, to, u) = unsafe {
            #[cfg(target_arch = "x86_64")]
            if super::simd::wide() {
                stretch_steps_avx2(src, lim, base, stops, dst, units, (i, o, u0))
            } else {
                stretch_steps(src, lim, base, stops, dst, units, (i, o, u0))
            }
            #[cfg(not(target_arch = "x86_64"))]
            stretch_steps(src, lim, base, stops, dst, units, (i, o, u0))
        };
        // SAFETY: the units below `u` were written
        unsafe { out.units.set_len(u) };
        (i, o) = (next, to);
        // stopped at a stop of another kind, or at the string's end
        if i + STEP_READ <= lim || lim == n {
            break;
        }
    }
    // a step without an escape may end inside a character: its bytes are
    // left to the caller, which works from character to character
    while i > i0 && b.get(i).is_some_and(|&c| (c as i8) < -0x40) {
        i -= 1;
        o -= 1;
    }
    // SAFETY: the bytes below `o` are the text before plus `b[i0..i]`
    // with each escape's two ASCII bytes replaced by one ASCII byte:
    // UTF-8, as `b` is, since no byte of a multi-byte character was
    // dropped, and `i` is a boundary.
    unsafe {
        bytes.set_len(o);
        out.text = String::from_utf8_unchecked(bytes);
    }
    i
}

/// [`stretch_steps`] compiled for AVX2: each 64-byte copy is two moves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi1,bmi2")]
unsafe fn stretch_steps_avx2(
    src: *const u8,
    n: usize,
    base: usize,
    stops: &[u64],
    dst: *mut u8,
    units: *mut Unit,
    at: (usize, usize, usize),
) -> (usize, usize, usize) {
    // SAFETY: the caller's
    unsafe { stretch_steps(src, n, base, stops, dst, units, at) }
}

/// The steps of [`simple_stretch`] from `at` (raw position, text length,
/// units), returning where they stopped.
///
/// # Safety
/// `src` holds at least `n` bytes and `stops` at least `n.div_ceil(64)`
/// words; `dst`
/// has room for `n - at.0` bytes past `at.1`, and `units` for one more
/// unit than `stops` has bits set in words `at.0 / 64` to
/// `n.div_ceil(64)`, past `at.2`.
#[inline(always)]
unsafe fn stretch_steps(
    src: *const u8,
    n: usize,
    base: usize,
    stops: &[u64],
    dst: *mut u8,
    units: *mut Unit,
    (mut i, mut o, mut u): (usize, usize, usize),
) -> (usize, usize, usize) {
    // SAFETY: `i + 66 <= n` in the loop, so the reads (`src[i..i + 64]`,
    // `src[at + 1]` with `at <= i + 64`, the stop words `i / 64` and the
    // next, both below `n.div_ceil(64)`) are in bounds; writes end at
    // `o + 65`, and `o` grows no faster than `i`, within the room
    // promised; `u` grows only at a stop.
    unsafe {
        // the stops of the word `i` is in, from `i` on: a step ends at the
        // next stop or at the word's end, so the next word's stops are
        // loaded a step ahead and the steps wait on no load
        let mut w = i / 64;
        let mut cur = match stops.get(w) {
            Some(&x) => x & (!0u64 << (i % 64)),
            None => return (i, o, u),
        };
        while i + STEP_READ <= n {
            let ahead = *stops.get_unchecked(w + 1);
            let has = cur != 0;
            // the stop, or the next word's first byte
            let at = w * 64 + cur.trailing_zeros() as usize;
            // The only ASCII stop is the backslash; any other starts a
            // character of several bytes, so the byte after it is not one
            // of an escape either. (Nor is a backslash's in `\\` or `\u`.)
            let d = SIMPLE[usize::from(*src.add(at + 1))] | u8::from(!has);
            if d == 0 {
                break;
            }
            // `at - i <= 64`: the copy reaches the stop or the word's end
            std::ptr::copy_nonoverlapping(src.add(i), dst.add(o), 64);
            *dst.add(o + at - i) = d;
            units.add(u).write(Unit {
                norm: (o + at - i) as u32,
                norm_len: 1,
                raw: (base + at) as u32,
                raw_len: 2,
            });
            u += usize::from(has);
            // selects, not branches: whether a step has an escape is as
            // good as random
            let next = select_unpredictable(has, at + 2, at);
            o += next - i - usize::from(has);
            i = next;
            let same = i / 64 == w;
            w = i / 64;
            cur = select_unpredictable(same, cur, ahead) & (!0u64 << (i % 64));
        }
    }
    (i, o, u)
}

/// The byte a JSON escape `\c` stands for, for the escapes of one
/// character other than `\\` (which may start an escape one level down).
#[inline]
const fn simple_json(c: u8) -> Option<u8> {
    Some(match c {
        b'n' => b'\n',
        b't' => b'\t',
        b'r' => b'\r',
        b'"' => b'"',
        b'/' => b'/',
        b'b' => 0x08,
        b'f' => 0x0C,
        _ => return None,
    })
}

/// Decode the escape starting at `b[i] == '\\'`; returns the character and
/// the end of the raw unit.
fn escape_at(b: &[u8], i: usize, json: bool) -> (char, usize) {
    let simple = |c: u8| match c {
        b'n' => Some('\n'),
        b't' => Some('\t'),
        b'r' => Some('\r'),
        b'/' => Some('/'),
        _ => None,
    };
    if json {
        match b.get(i + 1) {
            Some(b'\\') => {
                // a backslash in the decoded text: maybe an escape one level down
                match b.get(i + 2) {
                    Some(b'u') => {
                        if let Some((c, end)) = unicode_at(b, i + 2, 2) {
                            return (c, end);
                        }
                    }
                    Some(&c) => {
                        if let Some(ch) = simple(c) {
                            return (ch, i + 3);
                        }
                    }
                    None => {}
                }
                ('\\', i + 2)
            }
            Some(b'u') => match unicode_at(b, i + 1, 1) {
                Some((c, end)) => (c, end),
                None => ('\u{FFFD}', (i + 6).min(b.len())),
            },
            Some(b'b') => ('\u{8}', i + 2),
            Some(b'f') => ('\u{c}', i + 2),
            Some(b'"') => ('"', i + 2),
            Some(&c) => (simple(c).unwrap_or(c as char), i + 2),
            None => ('\\', i + 1),
        }
    } else {
        match b.get(i + 1) {
            Some(b'u') => match unicode_at(b, i + 1, 1) {
                Some((c, end)) => (c, end),
                None => ('\\', i + 1),
            },
            Some(&c) => match simple(c) {
                Some(ch) => (ch, i + 2),
                None => ('\\', i + 1),
            },
            None => ('\\', i + 1),
        }
    }
}

#[cfg(test)]
mod escape_tests {
    use super::*;

    /// The short path for one-character escapes decodes as the general
    /// decoder does, and only those escapes take it.
    #[test]
    fn simple_escapes_decode_as_the_general_decoder() {
        for c in 0..=255u8 {
            let raw = [b'\\', c];
            match simple_json(c) {
                Some(d) => assert_eq!(escape_at(&raw, 0, true), (char::from(d), 2), "{c}"),
                None => assert!(!b"ntr\"/bf".contains(&c), "{c}"),
            }
        }
        let mut n = Norm::default();
        normalize(r#"a\nb\t\"c\/\\n"#, 100, true, &mut n);
        assert_eq!(n.text, "a\nb\t\"c/\n");
        assert_eq!(n.raw_span(1, 2), (101, 103));
        assert_eq!(n.raw_span(2, 3), (103, 104));
        assert_eq!(n.raw_span(7, 8), (111, 114));
    }
}

#[cfg(test)]
mod stretch_tests {
    use super::*;

    /// Strings of prose, one-character escapes (several in a row, one
    /// every few bytes, none for hundreds of bytes), and now and then
    /// something only the stop-by-stop path decodes: both ways give the
    /// same text and the same map, from every start offset in a mask word.
    #[test]
    fn stretch_steps_normalise_as_stop_by_stop() {
        const PIECES: &[&str] = &[
            "the quick brown fox ",
            "é",
            "—",
            "jumps",
            r"\n",
            r"\n",
            r"\t",
            r#"\""#,
            r"\/",
            r"\r\n",
            " ",
            "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        ];
        const RARE: &[&str] = &[r"\u0040", r"\\n", "\u{200b}", "１", r"\\"];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut stepped, mut checked) = (0, 0);
        for round in 0..3000 {
            let mut raw = String::new();
            // now and then longer than a round of steps
            let len = (next() % if round % 10 == 0 { 6000 } else { 700 }) as usize;
            while raw.len() < len {
                let x = next();
                if x % 50 == 0 {
                    raw.push_str(RARE[(x / 50 % RARE.len() as u64) as usize]);
                } else {
                    raw.push_str(PIECES[(x % PIECES.len() as u64) as usize]);
                }
            }
            let base = 1000 + round % 64;
            let mut stops = Vec::new();
            stop_mask(raw.as_bytes(), &mut stops);
            let (mut fast, mut slow) = (Norm::default(), Norm::default());
            // text already in the buffer is kept ahead of the string's
            fast.text.push_str("ab");
            slow.text.push_str("ab");
            normalize_steps(&raw, base, true, &stops, &mut fast, true);
            normalize_steps(&raw, base, true, &stops, &mut slow, false);
            assert_eq!(fast.text, slow.text, "{raw:?}");
            assert_eq!(fast.units, slow.units, "{raw:?}");
            stepped += usize::from(raw.len() >= STEP_READ && raw.contains('\\'));
            checked += fast.units.len();
        }
        assert!(stepped > 1500 && checked > 50_000, "{stepped} {checked}");
    }
}

#[cfg(test)]
mod lead_tests {
    use super::*;
    use crate::redact::simd::{stable_lead, stable_punct};

    /// What `nfkc_stable` answers, without its shortcuts.
    fn slow(c: char) -> bool {
        !is_ignorable(c) && is_nfkc_quick(std::iter::once(c)) != IsNormalized::No
    }

    #[test]
    fn characters_the_scan_skips_are_stable() {
        let mut checked = 0;
        for c in (0x80..=0x10FFFFu32).filter_map(char::from_u32) {
            let mut buf = [0u8; 4];
            let b = c.encode_utf8(&mut buf).as_bytes();
            let skipped = stable_lead(b[0]) || (b[0] == 0xE2 && b[1] == 0x80 && stable_punct(b[2]));
            if skipped {
                assert!(slow(c), "U+{:04X} is skipped but not stable", c as u32);
                assert!(nfkc_stable(c), "U+{:04X}", c as u32);
                checked += 1;
            }
        }
        assert!(checked > 30_000, "{checked}");
    }
}
