//! Hand-written matchers for the built-in patterns that fire most often.
//!
//! A `regex` search inside a small trigger window costs ~2,300 instructions
//! (prefilter, forward and reverse DFA, the meta engine's set-up), which on
//! a body dense with findings was most of the time. These patterns are
//! simple enough to match directly with a few byte tests. Each matcher
//! returns exactly the match `Regex::find_at` would return for the rule's
//! pattern in `detectors.rs` — leftmost start, then the end the regex's
//! preference order (greedy repeats, alternatives in order) settles on; the
//! tests in this file compare them on generated inputs. The pattern stays
//! the specification: custom rules and the rules not listed here still run
//! as regexes.
//!
//! `(?-u:\b)` is an ASCII word boundary: word bytes are `[0-9A-Za-z_]`, and
//! the haystack's own ends count as non-word.

use super::simd;

/// A built-in rule with a hand-written matcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Matcher {
    Card,
    SsnSeparated,
    Nanp,
    National,
    E164,
    Iban,
    Email,
    Jwt,
    /// A literal prefix (one of several), then a run of one byte class.
    Prefixed(&'static [Alt]),
}

/// One alternative of a [`Matcher::Prefixed`] rule: `\b` + one of `prefixes`
/// + `min..=max` bytes of `class` (+ `\b` when `word_end`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Alt {
    prefixes: &'static [&'static [u8]],
    class: Class,
    min: usize,
    max: usize,
    word_end: bool,
}

/// Byte classes of the token runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// `[A-Z0-9]`
    UpperDigit,
    /// `[A-Za-z0-9]`
    Alnum,
    /// `[A-Za-z0-9_]`
    Word,
    /// `[A-Za-z0-9_-]`
    WordDash,
    /// `[A-Za-z0-9-]`
    AlnumDash,
}

impl Class {
    #[inline]
    fn has(self, c: u8) -> bool {
        let m = match self {
            Class::UpperDigit => byte::UPPER | byte::DIGIT,
            Class::Alnum => byte::ALNUM,
            Class::Word => byte::WORD,
            Class::WordDash => byte::WORD | byte::DASH,
            Class::AlnumDash => byte::ALNUM | byte::DASH,
        };
        byte::is(c, m)
    }
}

/// ASCII byte classes by table lookup: a class made of ranges costs a test
/// and a branch per range, and over the bytes of a match those add up.
pub(crate) mod byte {
    pub const WORD: u8 = 1;
    pub const ALNUM: u8 = 1 << 1;
    pub const DIGIT: u8 = 1 << 2;
    pub const UPPER: u8 = 1 << 3;
    pub const ALPHA: u8 = 1 << 4;
    pub const DASH: u8 = 1 << 5;
    /// An email's local part: `[A-Za-z0-9._%+-]`.
    pub const LOCAL: u8 = 1 << 6;
    /// An email's domain: `[A-Za-z0-9.-]`.
    pub const DOMAIN: u8 = 1 << 7;

    static TABLE: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut i = 0;
        while i < 256 {
            let c = i as u8;
            let mut m = 0;
            if c.is_ascii_alphanumeric() {
                m |= ALNUM | WORD | LOCAL | DOMAIN;
            }
            if c == b'_' {
                m |= WORD | LOCAL;
            }
            if c.is_ascii_digit() {
                m |= DIGIT;
            }
            if c.is_ascii_uppercase() {
                m |= UPPER;
            }
            if c.is_ascii_alphabetic() {
                m |= ALPHA;
            }
            if c == b'-' {
                m |= DASH | LOCAL | DOMAIN;
            }
            if c == b'.' {
                m |= LOCAL | DOMAIN;
            }
            if c == b'%' || c == b'+' {
                m |= LOCAL;
            }
            t[i] = m;
            i += 1;
        }
        t
    };

    /// Whether `c` is in one of the classes of `m`.
    #[inline]
    pub fn is(c: u8, m: u8) -> bool {
        TABLE[usize::from(c)] & m != 0
    }
}

const AWS: &[Alt] = &[Alt {
    prefixes: &[
        b"AKIA", b"ASIA", b"ABIA", b"ACCA", b"AGPA", b"AIDA", b"AIPA", b"ANPA", b"ANVA", b"AROA",
        b"APKA", b"ASCA",
    ],
    class: Class::UpperDigit,
    min: 16,
    max: 16,
    word_end: true,
}];
const GITHUB: &[Alt] = &[
    Alt {
        prefixes: &[b"ghp_", b"gho_", b"ghu_", b"ghs_", b"ghr_"],
        class: Class::Alnum,
        min: 36,
        max: 255,
        word_end: true,
    },
    Alt {
        prefixes: &[b"github_pat_"],
        class: Class::Word,
        min: 22,
        max: 255,
        word_end: true,
    },
];
const GITLAB: &[Alt] = &[Alt {
    prefixes: &[
        b"glpat-", b"gldt-", b"glrt-", b"glptt-", b"glft-", b"glsoat-",
    ],
    class: Class::WordDash,
    min: 20,
    max: usize::MAX,
    word_end: false,
}];
const SLACK: &[Alt] = &[Alt {
    prefixes: &[b"xoxa-", b"xoxb-", b"xoxp-", b"xoxo-", b"xoxs-", b"xoxr-"],
    class: Class::AlnumDash,
    min: 10,
    max: usize::MAX,
    word_end: false,
}];
const STRIPE: &[Alt] = &[
    Alt {
        prefixes: &[b"sk_live_", b"sk_test_", b"rk_live_", b"rk_test_"],
        class: Class::Alnum,
        min: 16,
        max: usize::MAX,
        word_end: true,
    },
    Alt {
        prefixes: &[b"whsec_"],
        class: Class::Alnum,
        min: 24,
        max: usize::MAX,
        word_end: true,
    },
];
const ANTHROPIC: &[Alt] = &[Alt {
    prefixes: &[b"sk-ant-"],
    class: Class::WordDash,
    min: 32,
    max: usize::MAX,
    word_end: false,
}];
// `sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{32,}`: the optional
// prefixes are made of the run's own class, so with or without them the
// match ends where the run ends, and a run of 32 is needed either way.
const OPENAI: &[Alt] = &[Alt {
    prefixes: &[b"sk-"],
    class: Class::WordDash,
    min: 32,
    max: usize::MAX,
    word_end: false,
}];

impl Matcher {
    /// The matcher standing in for built-in rule `rule`, if it has one.
    pub(crate) fn for_rule(rule: &str) -> Option<Matcher> {
        Some(match rule {
            "card.pan" => Matcher::Card,
            "ssn.separated" => Matcher::SsnSeparated,
            "phone.nanp" => Matcher::Nanp,
            "phone.national" => Matcher::National,
            "phone.e164" => Matcher::E164,
            "iban" => Matcher::Iban,
            "email" => Matcher::Email,
            "jwt" => Matcher::Jwt,
            "aws_key.access_key_id" => Matcher::Prefixed(AWS),
            "github.token" => Matcher::Prefixed(GITHUB),
            "gitlab.token" => Matcher::Prefixed(GITLAB),
            "slack.token" => Matcher::Prefixed(SLACK),
            "stripe.key" => Matcher::Prefixed(STRIPE),
            "anthropic_key" => Matcher::Prefixed(ANTHROPIC),
            "openai_key" => Matcher::Prefixed(OPENAI),
            _ => return None,
        })
    }

    /// The leftmost match starting at or after `at` in `h`, as `Regex::find_at`.
    ///
    /// `digits`, when given, is the digit mask of the text `h` is a slice of
    /// and `h`'s offset in it (`simd::Masks`): the digit-led patterns then
    /// jump from one run of digits to the next instead of testing each byte.
    pub(crate) fn find_at(
        self,
        h: &[u8],
        at: usize,
        digits: Option<(&[u64], usize)>,
    ) -> Option<(usize, usize)> {
        match (self, digits) {
            (Matcher::Email, _) => email(h, at),
            // every match starts at a `+`
            (Matcher::E164, _) => memchr::memchr_iter(b'+', h.get(at..)?)
                .find_map(|k| e164(h, at + k).map(|e| (at + k, e))),
            (
                Matcher::Card | Matcher::SsnSeparated | Matcher::National | Matcher::Nanp,
                Some((m, off)),
            ) => {
                let mut p = at;
                while let Some(d) = simd::next_set(m, off + p) {
                    let d = d - off;
                    if d >= h.len() {
                        break;
                    }
                    // `(415) 555-2671` starts at the bracket before the digits
                    if self == Matcher::Nanp && d > at && h[d - 1] == b'(' {
                        if let Some(e) = nanp(h, d - 1) {
                            return Some((d - 1, e));
                        }
                    }
                    if d == 0 || !word(h[d - 1]) {
                        if let Some(e) = self.match_at(h, d) {
                            return Some((d, e));
                        }
                    }
                    // no boundary inside a run of digits
                    p = simd::next_clear(m, off + d) - off;
                }
                None
            }
            // an IBAN's two check digits follow two capitals: they start a
            // run of digits, so only the places two bytes before a run
            // start are tried (rather than every byte of the window)
            (Matcher::Iban, Some((m, off))) => {
                let mut p = at + 2;
                while let Some(d) = simd::next_set(m, off + p) {
                    let d = d - off;
                    if d >= h.len() {
                        break;
                    }
                    let q = d - 2;
                    if !h[d - 1].is_ascii_digit() && (q == 0 || !word(h[q - 1])) {
                        if let Some(e) = iban(h, q) {
                            return Some((q, e));
                        }
                    }
                    p = simd::next_clear(m, off + d) - off;
                }
                None
            }
            _ => {
                let mut p = at;
                while p < h.len() {
                    let c = h[p];
                    // every other pattern starts with `\b` before a word
                    // byte, except the `(` of a bracketed area code
                    let starts = if word(c) {
                        self.may_start(c) && (p == 0 || !word(h[p - 1]))
                    } else {
                        c == b'(' && self == Matcher::Nanp
                    };
                    if starts {
                        if let Some(e) = self.match_at(h, p) {
                            return Some((p, e));
                        }
                    }
                    p += 1;
                }
                None
            }
        }
    }

    /// Whether a match can start with word byte `c` (a cheap test before
    /// [`Matcher::match_at`]).
    #[inline]
    fn may_start(self, c: u8) -> bool {
        match self {
            Matcher::Card | Matcher::SsnSeparated | Matcher::Nanp | Matcher::National => {
                c.is_ascii_digit()
            }
            Matcher::Iban => c.is_ascii_uppercase(),
            // starts at a `+`, not a word byte (found by its own search)
            Matcher::E164 => false,
            Matcher::Jwt => c == b'e',
            Matcher::Prefixed(alts) => alts
                .iter()
                .any(|a| a.prefixes.iter().any(|x| x.first() == Some(&c))),
            Matcher::Email => true,
        }
    }

    /// True for the matchers whose matches begin at a word start with
    /// their rule's literal (`trigger` finds those positions already): JWTs
    /// and the prefixed tokens.
    pub(crate) fn starts_at_literals(self) -> bool {
        matches!(self, Matcher::Jwt | Matcher::Prefixed(_))
    }

    /// The strings every match starts with, for the matchers that
    /// [start at literals](Matcher::starts_at_literals).
    #[cfg(test)]
    pub(crate) fn literal_starts(self) -> Option<Vec<&'static [u8]>> {
        match self {
            _ if !self.starts_at_literals() => None,
            Matcher::Prefixed(alts) => Some(
                alts.iter()
                    .flat_map(|a| a.prefixes.iter().copied())
                    .collect(),
            ),
            _ => Some(vec![b"eyJ".as_slice()]),
        }
    }

    /// End of the match starting at `p`, if any. `p` must be a possible
    /// start: at a word start, and for the digit-led patterns after the
    /// checks [`Matcher::find_at`] makes.
    pub(crate) fn match_at(self, h: &[u8], p: usize) -> Option<usize> {
        match self {
            Matcher::Card => card(h, p),
            Matcher::SsnSeparated => ssn(h, p),
            Matcher::Nanp => nanp(h, p),
            Matcher::National => national(h, p),
            Matcher::E164 => e164(h, p),
            Matcher::Iban => iban(h, p),
            Matcher::Jwt => jwt(h, p),
            Matcher::Prefixed(alts) => alts.iter().find_map(|a| prefixed(a, h, p)),
            Matcher::Email => None,
        }
    }
}

/// `[0-9A-Za-z_]`: a word byte for `(?-u:\b)`.
#[inline]
pub(crate) fn word(c: u8) -> bool {
    // a table: the range tests branch, and on prose they mispredict
    byte::is(c, byte::WORD)
}

/// A word boundary at `i`, just after a word byte.
#[inline]
fn ends_word(h: &[u8], i: usize) -> bool {
    h.get(i).is_none_or(|&c| !word(c))
}

/// End of the run of bytes with `f` from `i`.
#[inline]
fn run(h: &[u8], mut i: usize, f: impl Fn(u8) -> bool) -> usize {
    while i < h.len() && f(h[i]) {
        i += 1;
    }
    i
}

fn digits(h: &[u8], i: usize) -> usize {
    run(h, i, |c| c.is_ascii_digit())
}

/// Exactly `n` digits at `i`.
fn digits_n(h: &[u8], i: usize, n: usize) -> bool {
    h.get(i..i + n)
        .is_some_and(|x| x.iter().all(u8::is_ascii_digit))
}

fn is_at(h: &[u8], i: usize, set: &[u8]) -> bool {
    h.get(i).is_some_and(|c| set.contains(c))
}

/// `\b[0-9]+(?:[ -][0-9]+)*\b`: the most groups whose end is a boundary
/// (inside a run of digits there is none).
fn card(h: &[u8], p: usize) -> Option<usize> {
    let mut e = digits(h, p);
    if e == p {
        return None;
    }
    let mut best = None;
    loop {
        if ends_word(h, e) {
            best = Some(e);
        }
        if is_at(h, e, b" -") && h.get(e + 1).is_some_and(u8::is_ascii_digit) {
            e = digits(h, e + 1);
        } else {
            return best;
        }
    }
}

/// `\b[0-9]{3}([- ])[0-9]{2}([- ])[0-9]{4}\b`
fn ssn(h: &[u8], p: usize) -> Option<usize> {
    (digits_n(h, p, 3)
        && is_at(h, p + 3, b"- ")
        && digits_n(h, p + 4, 2)
        && is_at(h, p + 6, b"- ")
        && digits_n(h, p + 7, 4)
        && ends_word(h, p + 11))
    .then_some(p + 11)
}

/// `(?:\([2-9][0-9]{2}\)[ .-]?|\b[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}\b`
fn nanp(h: &[u8], p: usize) -> Option<usize> {
    let area =
        |i: usize| h.get(i).is_some_and(|c| (b'2'..=b'9').contains(c)) && digits_n(h, i + 1, 2);
    let q = if h.get(p) == Some(&b'(') {
        if !(area(p + 1) && h.get(p + 4) == Some(&b')')) {
            return None;
        }
        // the optional separator is taken when there: a digit must follow
        // it either way
        if is_at(h, p + 5, b" .-") {
            p + 6
        } else {
            p + 5
        }
    } else if area(p) && is_at(h, p + 3, b" .-") {
        p + 4
    } else {
        return None;
    };
    (digits_n(h, q, 3) && is_at(h, q + 3, b" .-") && digits_n(h, q + 4, 4) && ends_word(h, q + 8))
        .then_some(q + 8)
}

/// `\b0[1-9][0-9]{0,4}(?:[ -][0-9]{2,6}){1,4}\b`: every group is a whole run
/// of digits (a digit after it would be neither separator nor boundary);
/// the most groups, up to four, that end at a boundary.
fn national(h: &[u8], p: usize) -> Option<usize> {
    if h.get(p) != Some(&b'0') || !h.get(p + 1).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        return None;
    }
    let mut e = digits(h, p);
    if e - p > 6 {
        return None;
    }
    let mut best = None;
    for _ in 0..4 {
        if !is_at(h, e, b" -") {
            break;
        }
        let g = digits(h, e + 1);
        if !(2..=6).contains(&(g - (e + 1))) {
            break;
        }
        e = g;
        if ends_word(h, e) {
            best = Some(e);
        }
    }
    best
}

/// `\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}\b`, as the regex
/// settles it: the first way through in its preference order (each greedy
/// repeat tries its longest first). A group's separator and bracket are
/// taken whenever present (without them the group cannot start), so the
/// only choices are how many digits each group takes, whether it takes a
/// closing bracket, and how many groups there are. A place and group
/// number from which no way through exists is remembered, so no input
/// makes the search visit more than 6 × 45 of them (10 ways out of each).
fn e164(h: &[u8], p: usize) -> Option<usize> {
    if h.get(p) != Some(&b'+') || !h.get(p + 1).is_some_and(|c| (b'1'..=b'9').contains(c)) {
        return None;
    }
    let lead = digits(h, p + 2).min(p + 4) - (p + 2);
    let mut failed = [0u64; 6];
    (0..=lead)
        .rev()
        .find_map(|k| e164_groups(h, p, p + 2 + k, 0, &mut failed))
}

/// The rest of [`e164`] from `i`, where group `rep` (counting from 0)
/// starts: the match's end, if there is a way through.
fn e164_groups(h: &[u8], p: usize, i: usize, rep: usize, failed: &mut [u64; 6]) -> Option<usize> {
    // offsets stay below 45 (4 + 5 groups of at most 8 bytes); past 63 a
    // state would only go unremembered
    let bit = 1u64.checked_shl((i - p) as u32).unwrap_or(0);
    if failed.get(rep).is_some_and(|f| f & bit != 0) {
        return None;
    }
    let mut j = i;
    if is_at(h, j, b" .-") {
        j += 1;
    }
    if h.get(j) == Some(&b'(') {
        j += 1;
    }
    let n = (digits(h, j) - j).min(5);
    for d in (j + 1..=j + n).rev() {
        let close = h.get(d) == Some(&b')');
        for e in [d + 1, d].into_iter().skip(usize::from(!close)) {
            if rep < 5 {
                if let Some(x) = e164_groups(h, p, e, rep + 1, failed) {
                    return Some(x);
                }
            }
            // `\b`: a digit ends the group before a non-word byte, a `)`
            // before a word byte
            if word(h[e - 1]) != h.get(e).is_some_and(|&c| word(c)) {
                return Some(e);
            }
        }
    }
    if let Some(f) = failed.get_mut(rep) {
        *f |= bit;
    }
    None
}

/// `\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,32}\b`: as many characters as the
/// repeat takes (a single space before each is taken when there), then
/// back to the last one followed by a boundary.
fn iban(h: &[u8], p: usize) -> Option<usize> {
    let up = |i: usize| h.get(i).is_some_and(u8::is_ascii_uppercase);
    let ch = |c: &u8| byte::is(*c, byte::UPPER | byte::DIGIT);
    if !(up(p) && up(p + 1) && digits_n(h, p + 2, 2)) {
        return None;
    }
    let mut q = p + 4;
    let mut best = None;
    for n in 1..=32 {
        match h.get(q) {
            Some(c) if ch(c) => q += 1,
            Some(b' ') if h.get(q + 1).is_some_and(ch) => q += 2,
            _ => break,
        }
        if n >= 11 && ends_word(h, q) {
            best = Some(q);
        }
    }
    best
}

/// `\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}`: each
/// part is a whole run (the class has no `.`).
fn jwt(h: &[u8], p: usize) -> Option<usize> {
    let part = |i: usize| {
        let e = run(h, i, |c| Class::WordDash.has(c));
        (e - i >= 8).then_some(e)
    };
    if !h[p..].starts_with(b"eyJ") {
        return None;
    }
    let e = part(p + 3)?;
    if !h[e..].starts_with(b".eyJ") {
        return None;
    }
    let e = part(e + 4)?;
    if h.get(e) != Some(&b'.') {
        return None;
    }
    part(e + 1)
}

/// One [`Alt`] at `p`: the run after the prefix is taken whole (longer than
/// `max`, or followed by a word byte when a boundary must end it: no match).
fn prefixed(a: &Alt, h: &[u8], p: usize) -> Option<usize> {
    let rest = h.get(p..)?;
    let first = *rest.first()?;
    let pre = a
        .prefixes
        .iter()
        .find(|x| x.first() == Some(&first) && rest.starts_with(x))?;
    let s = p + pre.len();
    let e = run(h, s, |c| a.class.has(c));
    let n = e - s;
    if n < a.min {
        return None;
    }
    if a.word_end {
        (n <= a.max && ends_word(h, e)).then_some(e)
    } else {
        Some(s + n.min(a.max))
    }
}

/// `\b[A-Za-z0-9._%+-]{1,64}@` + domain (see [`domain`]). The local part
/// is the leftmost boundary at most 64 bytes before an `@` with only local
/// bytes between.
fn email(h: &[u8], at: usize) -> Option<(usize, usize)> {
    let local = |c: u8| byte::is(c, byte::LOCAL);
    // trigger windows hold an email or two: a byte loop finds their `@`
    // for less than memchr's set-up
    let find = |x: &[u8]| {
        if x.len() < 64 {
            x.iter().position(|&c| c == b'@')
        } else {
            memchr::memchr(b'@', x)
        }
    };
    let mut from = at;
    while let Some(k) = h.get(from..).and_then(find) {
        let a = from + k;
        let mut s = a;
        while s > at && a - s < 64 && local(h[s - 1]) {
            s -= 1;
        }
        // the first boundary in s..a
        let start = (s..a).find(|&i| {
            let prev = i.checked_sub(1).map(|j| word(h[j]));
            prev.unwrap_or(false) != word(h[i])
        });
        if let (Some(st), Some(e)) = (start, domain(h, a + 1)) {
            return Some((st, e));
        }
        from = a + 1;
    }
    None
}

/// `[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.LABEL)*\.[A-Za-z]{2,24}\b`
/// from `d`: labels are whole dot-separated parts (a label is followed by
/// a dot); the most labels after which the next part starts with 2–24
/// letters and a boundary.
fn domain(h: &[u8], d: usize) -> Option<usize> {
    let part_end = |i: usize| run(h, i, |c| byte::is(c, byte::ALNUM | byte::DASH));
    let label = |s: usize, e: usize| {
        (1..=64).contains(&(e - s))
            && h[s].is_ascii_alphanumeric()
            && h[e - 1].is_ascii_alphanumeric()
    };
    let tld = |s: usize| {
        let e = run(h, s, |c| byte::is(c, byte::ALPHA));
        ((2..=24).contains(&(e - s)) && ends_word(h, e)).then_some(e)
    };
    let e1 = part_end(d);
    if !label(d, e1) {
        return None;
    }
    // the last part, after a dot, that ends a domain (the parts before it
    // all labels): the longest domain
    let mut found = None;
    let mut e = e1;
    while h.get(e) == Some(&b'.') {
        let s = e + 1;
        found = tld(s).or(found);
        let pe = part_end(s);
        if !label(s, pe) {
            break;
        }
        e = pe;
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::redact::detectors;
    use proptest::prelude::*;

    /// The class table against each class's definition, on every byte.
    #[test]
    fn byte_classes_match_their_definitions() {
        for c in 0..=255u8 {
            let alnum = c.is_ascii_alphanumeric();
            let want = [
                (byte::WORD, alnum || c == b'_'),
                (byte::ALNUM, alnum),
                (byte::DIGIT, c.is_ascii_digit()),
                (byte::UPPER, c.is_ascii_uppercase()),
                (byte::ALPHA, c.is_ascii_alphabetic()),
                (byte::DASH, c == b'-'),
                (byte::LOCAL, alnum || b"._%+-".contains(&c)),
                (byte::DOMAIN, alnum || b".-".contains(&c)),
            ];
            for (m, w) in want {
                assert_eq!(byte::is(c, m), w, "byte {c:#04x}, class {m:#04x}");
            }
        }
    }

    fn regex_of(rule: &str) -> regex::Regex {
        let b = detectors::builtins()
            .into_iter()
            .find(|b| b.rule == rule)
            .expect("built-in rule");
        regex::Regex::new(b.pattern).unwrap()
    }

    /// Every start position: the matcher and the pattern agree.
    fn agree(rule: &str, h: &str) -> Result<(), TestCaseError> {
        // compiled once per rule and thread: a debug-build regex compile
        // costs more than the comparisons
        thread_local! {
            static RES: std::cell::RefCell<std::collections::HashMap<String, regex::Regex>> =
                std::cell::RefCell::new(std::collections::HashMap::new());
        }
        let re = RES.with(|m| {
            m.borrow_mut()
                .entry(rule.to_string())
                .or_insert_with(|| regex_of(rule))
                .clone()
        });
        let m = Matcher::for_rule(rule).unwrap();
        // `h` inside longer texts, for the digit-mask path
        let after = format!("{h} 12");
        let before = format!("7 {h}");
        let (mut ma, mut mb) = (simd::Masks::default(), simd::Masks::default());
        ma.fill(after.as_bytes());
        mb.fill(before.as_bytes());
        for at in 0..=h.len() {
            if !h.is_char_boundary(at) {
                continue;
            }
            let want = re.find_at(h, at).map(|x| (x.start(), x.end()));
            let got = m.find_at(h.as_bytes(), at, None);
            prop_assert_eq!(got, want, "rule {} on {:?} from {}", rule, h, at);
            let got = m.find_at(&after.as_bytes()[..h.len()], at, Some((&ma.digit, 0)));
            prop_assert_eq!(got, want, "rule {} on {:?} from {} (mask)", rule, h, at);
            let got = m.find_at(&before.as_bytes()[2..], at, Some((&mb.digit, 2)));
            prop_assert_eq!(
                got,
                want,
                "rule {} on {:?} from {} (mask, offset)",
                rule,
                h,
                at
            );
        }
        Ok(())
    }

    /// Real matches of each family, some at a length limit of the pattern
    /// (64-byte local part, 64-byte label, 24-letter TLD, 255-byte token).
    fn seeds(family: &str) -> Vec<String> {
        let s = |x: &str| x.to_string();
        match family {
            "digits" => vec![
                s("4111 1111 1111 1111"),
                s("4111-1111-1111-1111"),
                s("5555555555554444"),
                s("123-45-6789"),
                s("123 45 6789"),
                s("(415) 555-2671"),
                s("+44 20 7946 0958"),
                s("+1 (415) 555-2671"),
                s("+49-30-123456"),
                s("+33.1.23.45.67.89"),
                s("+123456789012345678901234567890"),
                s("(415)555-2671"),
                s("(415).555-2671"),
                s("415.555.2671"),
                s("0151 2345 6789"),
                s("020-7946-0958"),
                s("01 23 45 67 89"),
                s("012345 123456"),
            ],
            "iban" => vec![
                s("DE89 3704 0044 0532 0130 00"),
                s("GB82WEST12345698765432"),
                s("FR14 2004 1010 0505 0001 3M02 606"),
                s("MT84MALT011000012345MTLCAST001S"),
            ],
            "email" => vec![
                s("alice.smith@example.com"),
                s("bob@corp.example.org"),
                s("x_y%z+t-u@a-b.c-d.co.uk"),
                format!("{}@example.com", "l".repeat(64)),
                format!("a@{}.com", "d".repeat(64)),
                format!("a@b.{}", "t".repeat(24)),
                s("a@b.c0m.com"),
            ],
            "jwt" => vec![s("eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4f")],
            _ => {
                // every prefix the token rules list (from the trigger's own list)
                let mut v: Vec<String> = [
                    "aws_key.access_key_id",
                    "github.token",
                    "gitlab.token",
                    "slack.token",
                    "stripe.key",
                ]
                .iter()
                .flat_map(|r| crate::redact::rule_literals(r).map_or(&[][..], |l| l.0))
                .map(|p| match *p {
                    "xox" => "xoxp-1234567890".to_string(),
                    p if p.starts_with('A') => format!("{p}IOSFODNN7EXAMPLE"),
                    p => format!("{p}{}", "aB3d".repeat(9)),
                })
                .collect();
                v.extend([
                    format!("ghp_{}", "a1".repeat(18)),
                    format!("gho_{}", "Zz9".repeat(85)),
                    format!("github_pat_{}", "a_".repeat(11)),
                    format!("github_pat_{}", "b_9".repeat(85)),
                    format!("glpat-{}", "x-_y".repeat(5)),
                    format!("xoxb-{}", "1-a".repeat(4)),
                    format!("sk_live_{}", "q1".repeat(8)),
                    format!("whsec_{}", "w2".repeat(12)),
                    format!("sk-ant-{}", "a-_9".repeat(8)),
                    format!("sk-proj-{}", "Ab_-".repeat(8)),
                    format!("sk-{}", "zZ09".repeat(8)),
                ]);
                v
            }
        }
    }

    /// A seed with up to four one-byte edits (replace, insert, delete), in
    /// context, sometimes twice: near misses on every side of each rule.
    fn near(family: &'static str, alphabet: &'static str) -> impl Strategy<Value = String> {
        let seeds = seeds(family);
        let edit = (
            0..300usize,
            0..3u8,
            proptest::sample::select(alphabet.chars().collect::<Vec<_>>()),
        );
        let ctx = proptest::sample::select(&["", " ", "x", "_", "-", ".", "(", "é", "\n", "9"][..]);
        let one = (
            proptest::sample::select(seeds),
            proptest::collection::vec(edit, 0..4),
            ctx.clone(),
            ctx,
        )
            .prop_map(|(seed, edits, pre, post)| {
                let mut c: Vec<char> = seed.chars().collect();
                for (i, op, x) in edits {
                    let i = i % (c.len() + 1);
                    match op {
                        0 if i < c.len() => c[i] = x,
                        1 => c.insert(i, x),
                        _ if i < c.len() => {
                            c.remove(i);
                        }
                        _ => {}
                    }
                }
                format!("{pre}{}{post}", c.into_iter().collect::<String>())
            });
        proptest::collection::vec(one, 1..3).prop_map(|v| v.join(" "))
    }

    const RULES: &[&str] = &[
        "card.pan",
        "ssn.separated",
        "phone.nanp",
        "phone.national",
        "phone.e164",
        "iban",
        "email",
        "jwt",
        "aws_key.access_key_id",
        "github.token",
        "gitlab.token",
        "slack.token",
        "stripe.key",
        "anthropic_key",
        "openai_key",
    ];

    #[test]
    fn every_matcher_rule_is_a_builtin() {
        for r in RULES {
            assert!(Matcher::for_rule(r).is_some(), "{r}");
            let _ = regex_of(r);
        }
    }

    #[test]
    fn matchers_agree_on_known_cases() {
        let cases: &[(&str, &str)] = &[
            ("card.pan", "pay 4111 1111 1111 1111 now"),
            ("card.pan", "x 4111-1111-1111-1111a 12 34"),
            ("card.pan", "a1234 5678 9"),
            (
                "ssn.separated",
                "ssn 123-45-6789, 123 45 6789x 1234-45-6789",
            ),
            (
                "phone.nanp",
                "call (415) 555-2671 or 415.555.2671 or (415)555-2671",
            ),
            ("phone.nanp", "(115) 555-2671 2155552671 415 555 26712"),
            (
                "phone.national",
                "0151 2345 6789 and 020 7946 0958x 01 23 45 67 89 12",
            ),
            ("phone.national", "012345678 0 12 01-1234567 01-23-"),
            (
                "phone.e164",
                "+44 20 7946 0958, +1 (415) 555-2671x +0 12 +49(30)1234)5 ++1",
            ),
            (
                "phone.e164",
                "+1234567890123456789012345678901234567890a +1 2 3 4 5 6 7)",
            ),
            (
                "iban",
                "DE89 3704 0044 0532 0130 00 and GB82WEST12345698765432",
            ),
            ("iban", "DE89 3704 0044 0532 0130 00abc DE89 37"),
            (
                "email",
                "mail alice.smith@example.com, bob@corp.example.org.",
            ),
            (
                "email",
                "x@y@z.com a@b..com a@-b.com a@b.c0m a@b.com_x .a@b.co",
            ),
            ("jwt", "eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4f"),
            (
                "aws_key.access_key_id",
                "AKIAIOSFODNN7EXAMPLE AKIAIOSFODNN7EXAMPLEX",
            ),
            ("github.token", "ghp_0123456789abcdefghijklmnopqrstuvwxyzAB"),
            (
                "openai_key",
                "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
            ),
            (
                "anthropic_key",
                "sk-ant-abcdefghijklmnopqrstuvwxyz0123456789",
            ),
            (
                "stripe.key",
                "sk_live_0123456789abcdefXYZ whsec_0123456789abcdefghijklmnop",
            ),
        ];
        for (rule, h) in cases {
            agree(rule, h).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn digit_matchers_agree_with_their_patterns(h in near("digits", "0123456789 -.()+aZ_")) {
            for r in ["card.pan", "ssn.separated", "phone.nanp", "phone.national", "phone.e164"] {
                agree(r, &h)?;
            }
        }

        #[test]
        fn iban_matcher_agrees(h in near("iban", "0123456789 ABZaz_-")) {
            agree("iban", &h)?;
        }

        #[test]
        fn email_matcher_agrees(h in near("email", "az09.-_%+@ ")) {
            agree("email", &h)?;
        }

        #[test]
        fn jwt_matcher_agrees(h in near("jwt", "aZ9_-. =")) {
            agree("jwt", &h)?;
        }

        #[test]
        fn token_matchers_agree(h in near("token", "aZ09_- .")) {
            for r in &RULES[8..] {
                agree(r, &h)?;
            }
        }
    }
}
