//! The cheap pass before the regexes: find the few places in a string where
//! a detector *could* match, as windows, so the patterns run only there.
//!
//! Every built-in pattern needs one of: an `@` (email), a `=`/`:` after a
//! secret-ish label (assignments), `-----BEGIN` (PEM), a run of 15+ token
//! characters (API keys, JWTs, bearer tokens, webhooks), or a cluster of 7+
//! digits (cards, IBANs, SSNs, phones; 4+ after a birth-date label or with
//! IPv4 on). Finding those takes memchr/memmem and bit masks of the digit
//! and token bytes (`simd.rs`), a few instructions per byte on prose; a
//! single `RegexSet` over everything ran at ~0.5 GB/s because the union has
//! no literal prefix to skip with. Digit clusters also get a shape (group
//! lengths, separators) so each digit rule runs only where it can match.
//!
//! Windows start and end at whitespace (or at a run's own edge, which is a
//! non-word character in the full text), so `(?-u:\b)` means the same in a
//! window as in the whole string; validators see the whole string.

use super::confirm::byte;
use super::simd::{self, Masks};

/// What every PEM block starts with.
const PEM_BEGIN: &[u8] = b"-----BEGIN";

/// Built once: a one-shot `memmem::find` rebuilds its searcher per call.
static PEM: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(PEM_BEGIN));

/// Strings shorter than this are searched for `@`, `=` and `:` a byte at
/// a time (see [`find`]).
const SHORT: usize = 16;

/// Which trigger a rule is run behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Email,
    Assign,
    Pem,
    Token,
    Digits,
    /// Custom rules and IPv6: the whole string, with the regex's own prefilter.
    Always,
}

/// What a digit cluster could be, from its shape (group lengths and
/// separators): each digit rule runs only in windows whose cluster has its
/// shape. Necessary conditions of the patterns, not sufficient ones.
pub(crate) mod shape {
    /// 13+ digits in groups joined by one space or dash (`card.pan`).
    pub const CARD: u16 = 1;
    /// Groups of 3, 2, 4 joined by one space or dash (`ssn.separated`).
    pub const SSN_SEP: u16 = 1 << 1;
    /// A group of exactly 9 digits (`ssn.labelled`).
    pub const NINE: u16 = 1 << 2;
    /// A `+` before a digit, 7+ digits (`phone.e164`).
    pub const E164: u16 = 1 << 3;
    /// Groups of 3, 3, 4 (`phone.nanp`).
    pub const NANP: u16 = 1 << 4;
    /// A group `0[1-9]…` of 2–6 digits joined to a next group of 2–6 by one
    /// space or dash, 9+ digits in all (`phone.national`).
    pub const NATIONAL: u16 = 1 << 5;
    /// Two capitals and two digits at or before the cluster (`iban`).
    pub const IBAN: u16 = 1 << 6;
    /// A date after a birth-date label (`dob.labelled`).
    pub const DOB: u16 = 1 << 7;
    /// Short dotted numbers, when IPv4 is on (`ipv4`).
    pub const IPV4: u16 = 1 << 8;

    /// The shape a built-in digit rule needs; `!0` (every window) for others.
    pub fn needed_by(rule: &str) -> u16 {
        match rule {
            "card.pan" => CARD,
            "ssn.separated" => SSN_SEP,
            "ssn.labelled" => NINE,
            "phone.e164" => E164,
            "phone.nanp" => NANP,
            "phone.national" => NATIONAL,
            "iban" => IBAN,
            "dob.labelled" => DOB,
            "ipv4" => IPV4,
            _ => !0,
        }
    }
}

/// Shortest run of token characters that triggers the token detectors: the
/// shortest match of a token rule (`xox?-` and 10 more, a Slack token).
const TOKEN_RUN: usize = 15;

#[inline]
fn is_email_local(c: u8) -> bool {
    byte::is(c, byte::LOCAL)
}

#[inline]
fn is_email_domain(c: u8) -> bool {
    byte::is(c, byte::DOMAIN)
}

/// Start of the word `max` bytes or fewer before `pos` (just after a
/// whitespace byte), or `pos` itself if there is none in reach.
fn expand_left(b: &[u8], pos: usize, max: usize) -> usize {
    let lo = pos.saturating_sub(max);
    if lo == 0 {
        return 0;
    }
    match b[lo..pos].iter().position(|c| c.is_ascii_whitespace()) {
        Some(i) => lo + i + 1,
        None => pos,
    }
}

/// End of the word `max` bytes or fewer after `pos` (at a whitespace
/// byte), or `pos` itself if there is none in reach.
fn expand_right(b: &[u8], pos: usize, max: usize) -> usize {
    let hi = (pos + max).min(b.len());
    if hi == b.len() {
        return b.len();
    }
    match b[pos..hi].iter().rposition(|c| c.is_ascii_whitespace()) {
        Some(i) => pos + i,
        None => pos,
    }
}

/// Where a token window starts: at the run, at the `https:` glued before
/// it, or at a `bearer` (any case, at a word start) that only spaces or
/// tabs separate from it. Every token pattern but two matches a run of
/// token bytes from its start; `slack.webhook` starts with the `https:`
/// before its run (`:` is no token byte) and `bearer.token` with its
/// literal, then blanks. So nothing further back can start a match.
/// (Windows used to reach back to the first word start within 24 bytes,
/// for every rule's literals: more bytes to filter, and a `bearer` glued
/// to a longer word, as in `{"Authorization":"Bearer <token>`, was out of
/// reach.)
fn token_lead(b: &[u8], s: usize) -> usize {
    if s >= 6 && &b[s - 6..s] == b"https:" {
        return s - 6;
    }
    let mut k = s;
    while k > 0 && matches!(b[k - 1], b' ' | b'\t') {
        k -= 1;
    }
    match k.checked_sub(6) {
        Some(w)
            if k < s
                && b[w..k].eq_ignore_ascii_case(b"bearer")
                && (w == 0 || !super::confirm::word(b[w - 1])) =>
        {
            w
        }
        _ => s,
    }
}

/// Push `w`, merging with the previous window when they touch.
fn push(v: &mut Vec<(usize, usize)>, w: (usize, usize)) {
    if w.0 >= w.1 {
        return;
    }
    if let Some(last) = v.last_mut() {
        if w.0 <= last.1 {
            last.1 = last.1.max(w.1);
            return;
        }
    }
    v.push(w);
}

/// Whether the byte at `k` (not a digit) is a separator that keeps a digit
/// cluster going: at most two separator bytes, then a digit.
#[inline]
fn joins_next(b: &[u8], k: usize) -> bool {
    matches!(b[k], b' ' | b'-' | b'.' | b'/' | b'(' | b')' | b'+')
        && (b.get(k + 1).is_some_and(u8::is_ascii_digit)
            || (matches!(b.get(k + 1), Some(b' ' | b'(' | b')' | b'-'))
                && b.get(k + 2).is_some_and(u8::is_ascii_digit)))
}

/// Builds a digit cluster's [`shape`] flags as its groups go by.
#[derive(Default)]
struct Shaper {
    sh: u16,
    /// Lengths of the two groups before the current one.
    prev: [usize; 2],
    /// Whether each of those was joined to its predecessor by one space or dash.
    single_join: [bool; 2],
    /// The current group is joined to the previous by one space or dash.
    joined_one: bool,
    /// Digits in the groups joined by single spaces or dashes so far.
    run: usize,
    /// The previous group could open a national number.
    prev_trunk: bool,
}

impl Shaper {
    /// A group of `glen` digits starting at `gstart` has ended.
    fn group(&mut self, b: &[u8], gstart: usize, glen: usize) {
        let sh = &mut self.sh;
        if glen == 9 {
            *sh |= shape::NINE;
        }
        // a national number: a group "0[1-9]…" of 2–6 digits, then one of
        // 2–6 joined by a single space or dash
        if self.prev_trunk && self.joined_one && (2..=6).contains(&glen) {
            *sh |= shape::NATIONAL;
        }
        self.prev_trunk = (2..=6).contains(&glen) && b[gstart] == b'0' && b[gstart + 1] != b'0';
        if self.prev == [3, 2] && glen == 4 && self.single_join[1] && self.joined_one {
            *sh |= shape::SSN_SEP;
        }
        if self.prev == [3, 3] && glen == 4 {
            *sh |= shape::NANP;
        }
        self.run += glen;
        if self.run >= 13 {
            *sh |= shape::CARD;
        }
        self.prev = [self.prev[1], glen];
        self.single_join = [self.single_join[1], self.joined_one];
    }

    /// The separator at `k` keeps the cluster going.
    fn separator(&mut self, b: &[u8], k: usize) {
        let one = matches!(b[k], b' ' | b'-') && b.get(k + 1).is_some_and(u8::is_ascii_digit);
        if !one {
            self.run = 0;
        }
        if b[k] == b'+' || b.get(k + 1) == Some(&b'+') {
            self.sh |= shape::E164;
        }
        self.joined_one = one;
    }
}

/// Like [`push`], keeping each window's shape flags (ORed on merge).
fn push_shaped(v: &mut Vec<(usize, usize)>, f: &mut Vec<u16>, w: (usize, usize), sh: u16) {
    if w.0 >= w.1 {
        return;
    }
    if let (Some(last), Some(lf)) = (v.last_mut(), f.last_mut()) {
        if w.0 <= last.1 {
            last.1 = last.1.max(w.1);
            *lf |= sh;
            return;
        }
    }
    v.push(w);
    f.push(sh);
}

/// Windows for one string, per class (each sorted and merged).
#[derive(Debug, Default)]
pub(crate) struct Windows {
    pub email: Vec<(usize, usize)>,
    pub assign: Vec<(usize, usize)>,
    pub pem: Vec<(usize, usize)>,
    pub token: Vec<(usize, usize)>,
    pub digits: Vec<(usize, usize)>,
    /// The [`shape`] flags of each `digits` window (same index).
    pub digit_shapes: Vec<u16>,
    /// Byte classes of the string being scanned (kept for their buffers).
    masks: Masks,
    /// The string, ASCII-lowercased, for the dictionaries (a reused buffer).
    pub lower: Vec<u8>,
    /// Where token literals were found in a window (a reused buffer).
    pub lit_at: Vec<(usize, usize)>,
    /// The digits where a cluster may start: the digit mask less the
    /// UUID / hash runs (a reused buffer).
    starts: Vec<u64>,
}

impl Windows {
    pub fn get(&self, c: Class) -> &[(usize, usize)] {
        match c {
            Class::Email => &self.email,
            Class::Assign => &self.assign,
            Class::Pem => &self.pem,
            Class::Token => &self.token,
            Class::Digits => &self.digits,
            Class::Always => &[],
        }
    }

    /// The digit mask of the string last passed to [`find`].
    pub fn digit_mask(&self) -> &[u64] {
        &self.masks.digit
    }

    fn clear(&mut self) {
        self.email.clear();
        self.assign.clear();
        self.pem.clear();
        self.token.clear();
        self.digits.clear();
        self.digit_shapes.clear();
    }
}

/// Labels after which `=`/`:` starts a credential (lowercase substrings of
/// the word before it).
const ASSIGN_LABELS: &[&str] = &["pass", "pwd", "secret", "key", "token"];

/// Find all windows in `text`; with `lower`, also make the lowercased
/// copy of it for the dictionaries (in `w.lower`).
pub(crate) fn find(text: &str, min_digits: usize, lower: bool, w: &mut Windows) {
    w.clear();
    let b = text.as_bytes();

    // Short strings (keys, roles, model names: a chat body is a dozen of
    // them around the prompt) by a byte loop: the SIMD searchers' set-up
    // costs more than the search there. Calls `f` at each `one` or `two`.
    let short = b.len() < SHORT;
    let each_of = |f: &mut dyn FnMut(usize), one: u8, two: u8| {
        if short {
            for (i, &c) in b.iter().enumerate() {
                if c == one || c == two {
                    f(i);
                }
            }
        } else if one == two {
            memchr::memchr_iter(one, b).for_each(f);
        } else {
            memchr::memchr2_iter(one, two, b).for_each(f);
        }
    };
    each_of(
        &mut |at| {
            let mut s = at;
            while s > 0 && at - s < 64 && is_email_local(b[s - 1]) {
                s -= 1;
            }
            let mut e = at + 1;
            while e < b.len() && e - at < 256 && is_email_domain(b[e]) {
                e += 1;
            }
            if s < at && e > at + 1 {
                push(&mut w.email, (s, e));
            }
        },
        b'@',
        b'@',
    );

    each_of(
        &mut |at| {
            // the word before, past quotes and spaces
            let mut e = at;
            let mut skipped = 0;
            while e > 0 && skipped < 3 && matches!(b[e - 1], b'"' | b'\'' | b' ' | b'\t') {
                e -= 1;
                skipped += 1;
            }
            let mut s = e;
            while s > 0
                && e - s < 40
                && (b[s - 1].is_ascii_alphanumeric() || matches!(b[s - 1], b'_' | b'-'))
            {
                s -= 1;
            }
            if s == e {
                return;
            }
            let word = &b[s..e];
            let hit = ASSIGN_LABELS
                .iter()
                .any(|l| contains_ci(word, l.as_bytes()));
            if hit {
                let end = expand_right(b, (at + 1).min(b.len()), 200);
                let end = if end <= at {
                    (at + 200).min(b.len())
                } else {
                    end
                };
                let end = floor_boundary(text, end);
                push(&mut w.assign, (s, end.max(at + 1).min(b.len())));
            }
        },
        b'=',
        b':',
    );

    if b.len() >= PEM_BEGIN.len() {
        if let Some(at) = PEM.find(b) {
            push(&mut w.pem, (at, b.len()));
        }
    }

    let masks = &mut w.masks;
    if lower {
        masks.fill_and_lower(b, &mut w.lower);
    } else {
        masks.fill(b);
    }
    let starts = &mut w.starts;
    starts.clear();
    starts.extend_from_slice(&masks.digit);
    // Token runs of 15+ bytes, from the token-class mask.
    let mut i = 0usize;
    while let Some((s, e)) = simd::next_run(&masks.token, i, TOKEN_RUN) {
        let e = e.min(b.len());
        let lead = token_lead(b, s);
        // a run of lowercase hex, dashes and dots (UUIDs, git SHAs,
        // hashes) holds no token format, unless it is a bearer's token
        if lead == s && simd::hexish(&b[s..e]) {
            // the digits in it start no cluster
            simd::clear_range(starts, s, e);
        } else if lead != s || b[s..e].iter().any(u8::is_ascii_alphabetic) {
            // every token format has a letter: a run without one (a card
            // number, a long order number) is left to the digit rules
            push(&mut w.token, (lead, e));
        }
        i = e + 1;
    }

    digit_windows(text, min_digits, w);
}

/// Digit clusters: digits with gaps of at most two separator bytes, each
/// opening a window in `w.digits` when its shape fits a digit rule.
fn digit_windows(text: &str, min_digits: usize, w: &mut Windows) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT (checked just above).
        unsafe { digit_windows_popcnt(text, min_digits, w) };
        return;
    }
    digit_windows_in(text, min_digits, w);
}

/// [`digit_windows`] compiled with the POPCNT instruction: each candidate
/// is decided on digit counts, whose software popcount (the x86-64 baseline
/// has none) made every decision wait a dozen cycles.
///
/// # Safety
/// The CPU must have POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn digit_windows_popcnt(text: &str, min_digits: usize, w: &mut Windows) {
    digit_windows_in(text, min_digits, w);
}

#[inline(always)]
fn digit_windows_in(text: &str, min_digits: usize, w: &mut Windows) {
    // the masks as plain slices, apart from the vectors pushed to: through
    // `w` each step reloaded them, as a push might have moved them
    let Windows {
        masks,
        starts,
        digits,
        digit_shapes,
        ..
    } = w;
    let mut out = Shaped {
        windows: digits,
        shapes: digit_shapes,
    };
    if min_digits >= 7 {
        by_words(text, &masks.digit, starts, &mut out);
    } else {
        by_runs(text, min_digits, &masks.digit, starts, &mut out);
    }
}

/// The digit windows and their shapes, as pushed to.
struct Shaped<'a> {
    windows: &'a mut Vec<(usize, usize)>,
    shapes: &'a mut Vec<u16>,
}

/// The digit pass one run of digits at a time: each run start is found,
/// counted and decided on its own. Used with IPv4 on (clusters of four
/// digits matter), and in tests as what [`by_words`] must agree with.
#[inline(always)]
fn by_runs(text: &str, min_digits: usize, digit: &[u64], starts: &[u64], out: &mut Shaped<'_>) {
    let b = text.as_bytes();
    let mut i = 0usize;
    // every cluster start is the first digit of a run (the walk below
    // resumes past the end of a run or cluster)
    while let Some(s) = simd::next_set(starts, i) {
        if s >= b.len() {
            break;
        }
        // Four digits with gaps of at most two lie within ten bytes: with
        // fewer there, no detector can start here (most digits in prose).
        if simd::count(digit, s, 10) < 4 {
            // the rest of this run of digits starts a shorter cluster still
            i = simd::next_clear(digit, s);
            continue;
        }
        // Seven digits with such gaps lie within 19 bytes. With fewer, only
        // a labelled date can be here (IPv4 off): look for its label before
        // walking the cluster, as the walk below would.
        if min_digits >= 7 && simd::count(digit, s, 19) < 7 {
            let run_end = simd::next_clear(digit, s).min(b.len());
            if !lone_date(b, s, run_end) {
                i = run_end;
                continue;
            }
        }
        i = cluster(text, min_digits, digit, s, out);
    }
}

/// The digit pass a mask word at a time (IPv4 off): the run starts of a
/// word come from its masks, and each is ruled out on counts taken from
/// the two words in registers; a cluster too short for any rule but the
/// three that need something before it (a `+`, a capital, a label) is
/// ruled out on those bytes instead of walked. Finds the windows
/// [`by_runs`] finds (a test compares them), with a fraction of the work
/// on prose full of dates and version numbers.
#[inline(always)]
fn by_words(text: &str, digit: &[u64], starts: &[u64], out: &mut Shaped<'_>) {
    let b = text.as_bytes();
    let mut i = 0usize;
    'words: loop {
        // the next word with a digit that may start a cluster, from `i` on
        // (past the words without: all of plain prose)
        let mut k = i / 64;
        let Some(mut st) = starts.get(k).map(|&w| w & (!0u64 << (i % 64))) else {
            return;
        };
        while st == 0 {
            k += 1;
            let Some(&w) = starts.get(k) else {
                return;
            };
            st = w;
        }
        let d0 = digit.get(k).copied().unwrap_or(0);
        let carry = k
            .checked_sub(1)
            .and_then(|j| digit.get(j))
            .map_or(0, |w| w >> 63);
        // first digits of runs
        let mut rs = st & !(d0 << 1 | carry);
        let dd = u128::from(digit.get(k + 1).copied().unwrap_or(0)) << 64 | u128::from(d0);
        while rs != 0 {
            let bit = rs.trailing_zeros();
            rs &= rs - 1;
            let s = k * 64 + bit as usize;
            if s >= b.len() {
                return;
            }
            // the digit mask from `s` on, 64 bytes of it
            let from = (dd >> bit) as u64;
            // as in `by_runs`: four digits within ten bytes, seven in 19
            if (from & 0x3FF).count_ones() < 4 {
                continue;
            }
            let e = if (from & 0x7_FFFF).count_ones() < 7 {
                let run_end = (s + (!from).trailing_zeros() as usize).min(b.len());
                if !lone_date(b, s, run_end) {
                    continue;
                }
                cluster(text, 7, digit, s, out)
            } else {
                match quiet(b, s, from) {
                    // nothing from here to `q` opens a window
                    Some(q) => q,
                    None => cluster(text, 7, digit, s, out),
                }
            };
            if e >= (k + 1) * 64 {
                i = e;
                continue 'words;
            }
            rs &= !0u64 << (e % 64);
        }
        i = (k + 1) * 64;
    }
}

/// The digit windows and shapes of the string last passed to [`find`]
/// (IPv4 off), found again by [`by_runs`]: what [`by_words`] must find.
#[cfg(test)]
pub(crate) fn digit_windows_by_runs(text: &str, w: &Windows) -> (Vec<(usize, usize)>, Vec<u16>) {
    let (mut windows, mut shapes) = (Vec::new(), Vec::new());
    let mut out = Shaped {
        windows: &mut windows,
        shapes: &mut shapes,
    };
    by_runs(text, 7, &w.masks.digit, &w.starts, &mut out);
    (windows, shapes)
}

/// Whether the run of digits `s..run_end`, in a cluster of fewer than
/// seven digits, may be a date after its birth-date label.
#[inline(always)]
fn lone_date(b: &[u8], s: usize, run_end: usize) -> bool {
    let joined = run_end < b.len() && joins_next(b, run_end);
    let before = &b[s.saturating_sub(40)..s];
    let len = run_end - s;
    // alone, a run is a date only as a year or as six digits
    if joined {
        dob_label_adjacent(before)
    } else if len == 4 {
        matches!(&b[s..s + 2], b"18" | b"19" | b"20") && dob_label(before)
    } else {
        len == 6 && dob_label_adjacent(before)
    }
}

/// Whether the cluster from `s` (`from`: the digit mask from there) has at
/// most eight digits and opens no window (IPv4 off), nor does any cluster
/// starting inside it: then where the next cluster that may open one can
/// start, past them all.
///
/// Nine digits with gaps of at most two lie within 25 bytes, and before
/// the first byte that is neither a digit nor a separator: with fewer
/// there, the cluster has at most eight. At that length only three digit
/// rules can match, and each needs something before the digits: a `+`
/// (an international phone; the cluster spans at most 22 bytes), two
/// capitals in the 12 bytes before (an IBAN's country code), or a
/// birth-date label in the 40 before. A cluster starting inside it has
/// fewer digits, and what is before it is the cluster's bytes or within
/// those ranges; when that first other byte is within 24 bytes, so is
/// every cluster starting before it, which all are skipped.
#[inline(always)]
fn quiet(b: &[u8], s: usize, from: u64) -> Option<usize> {
    // the 48 bytes before the cluster and 32 from it; near the string's
    // ends, copies padded with zeros (in no class but "other", which ends
    // a cluster where the string does)
    let (mut pad_before, mut pad_after) = ([0u8; 48], [0u8; 32]);
    let whole = s.checked_sub(48).and_then(|lo| b.get(lo..s));
    let before: &[u8; 48] = match whole.and_then(|c| c.try_into().ok()) {
        Some(a) => a,
        None => {
            let c = &b[s.saturating_sub(48)..s];
            pad_before[48 - c.len()..].copy_from_slice(c);
            &pad_before
        }
    };
    let after: &[u8; 32] = match b.get(s..s + 32).and_then(|c| c.try_into().ok()) {
        Some(a) => a,
        None => {
            let c = &b[s..];
            pad_after[..c.len()].copy_from_slice(c);
            &pad_after
        }
    };
    let (other, plus) = simd::after32(after);
    let reach = other.trailing_zeros().min(25);
    if (from & ((1u64 << reach) - 1)).count_ones() >= 9
        || plus & ((1 << 24) - 1) != 0
        || before[46] == b'+'
        || before[47] == b'+'
    {
        return None;
    }
    // bit 48 is `s`
    let [upper, lb, ls] = simd::before48(before);
    let label = !0u64 << 8;
    let no = upper >> 36 == 0
        && !dob_label_in(&before[8..], (lb & label) >> 8, (ls & ls >> 1 & label) >> 8);
    no.then_some(if reach < 25 {
        s + reach as usize
    } else {
        s + 1
    })
}

/// Walk the cluster starting at `s`, a group of digits at a time, push a
/// window if its shape fits a digit rule, and return where the next
/// cluster may start.
#[inline(always)]
fn cluster(text: &str, min_digits: usize, digit: &[u64], s: usize, out: &mut Shaped<'_>) -> usize {
    let b = text.as_bytes();
    // Walk the cluster a group of digits at a time (its end from the
    // mask), then the one or two separator bytes to the next group.
    let mut n = 0usize;
    let mut groups = 0usize;
    let mut shaper = Shaper::default();
    let mut k = s;
    let e = loop {
        let gend = simd::next_clear(digit, k).min(b.len());
        shaper.group(b, k, gend - k);
        n += gend - k;
        groups += 1;
        if gend >= b.len() || !joins_next(b, gend) {
            break gend;
        }
        shaper.separator(b, gend);
        k = gend + 1;
        if !b[k].is_ascii_digit() {
            // a second separator byte (`) ` in `(415) 555`)
            shaper.separator(b, k);
            k += 1;
        }
    };
    let mut sh = shaper.sh;
    // Which digit detectors could match here? SSNs need 9 digits,
    // national phones 9–10, cards 13; an international phone 8 after a
    // `+`; an IBAN starts with two capitals and two digits; a date of
    // birth needs its label. ISO dates, times and amounts open nothing.
    let plus = s > 0 && (b[s - 1] == b'+' || (b[s - 1] == b'(' && s > 1 && b[s - 2] == b'+'));
    if n < 4 {
        return e.max(s + 1);
    }
    let single = groups == 1;
    // glued to letters: a slice of an identifier (UUID, hash, SKU)
    let glued = single
        && ((s > 0 && b[s - 1].is_ascii_alphabetic())
            || b.get(e).is_some_and(u8::is_ascii_alphabetic));
    let lo = s.saturating_sub(12);
    let iban = n >= 7
        && iban_start(
            &b[lo..s.min(b.len())],
            &b[s..e],
            simd::count(digit, lo, s - lo) > 0,
        );
    // A numeric date follows its label directly; a lone year may end
    // "born on 3 March 1990", so its label is looked for further back.
    let dob = n <= 8
        && (date_like(&b[s..e], n) || n >= 6)
        && if e - s == 4 {
            dob_label(&b[s.saturating_sub(40)..s])
        } else {
            dob_label_adjacent(&b[s.saturating_sub(40)..s])
        };
    if plus && n >= 7 {
        sh |= shape::E164;
    } else if n < 7 {
        sh &= !shape::E164;
    }
    if n < 9 {
        sh &= !shape::NATIONAL;
    }
    if iban {
        sh |= shape::IBAN;
    }
    if dob {
        sh |= shape::DOB;
    }
    if n >= min_digits && min_digits < 7 {
        sh |= shape::IPV4;
    }
    // a single run of digits glued to letters is a slice of an identifier
    if glued {
        sh &= shape::IBAN | shape::DOB | shape::IPV4 | shape::E164;
    }
    if sh != 0 {
        // context the patterns need: a label before ("social security
        // number: ", "date of birth: "), an IBAN's letter groups after;
        // small windows stay separate in dense text
        let ws = expand_left(b, s, if dob { 40 } else { 28 });
        let we = floor_boundary(text, expand_right(b, e, if iban { 40 } else { 8 }));
        push_shaped(out.windows, out.shapes, (ws, we.max(e)), sh);
    }
    e.max(s + 1)
}

/// Two capitals followed by two digits just before or at the start of a
/// cluster: where an IBAN begins.
///
/// `digit_before`: whether `before` has a digit (from the mask; without
/// one, only a country code glued to the cluster can start an IBAN).
fn iban_start(before: &[u8], cluster: &[u8], digit_before: bool) -> bool {
    let starts = |x: &[u8]| {
        x.len() >= 4
            && x[0].is_ascii_uppercase()
            && x[1].is_ascii_uppercase()
            && x[2].is_ascii_digit()
            && x[3].is_ascii_digit()
    };
    (digit_before && (0..before.len()).any(|k| starts(&before[k..]))) || {
        // the country code glued to the cluster: "DE89 3704 ..." has the
        // cluster start at "89", two capitals right before it
        let l = before.len();
        l >= 2
            && before[l - 2].is_ascii_uppercase()
            && before[l - 1].is_ascii_uppercase()
            && cluster.len() >= 2
    }
}

/// A short digit cluster that could be (the numeric part of) a date: a
/// year 1850–2099 alone, or 4–6 digits with two separators (`1/2/90`).
fn date_like(c: &[u8], n: usize) -> bool {
    if n == 4 && c.len() == 4 {
        return matches!(&c[..2], b"18" | b"19" | b"20");
    }
    (4..=6).contains(&n) && c.iter().filter(|x| !x.is_ascii_digit()).count() == 2
}

/// The labels [`dob_label`] looks for anywhere before a date (as a list:
/// what its test compares it with).
#[cfg(test)]
pub(crate) const LABELS: &[&[u8]] = &[b"dob", b"d.o.b", b"birth", b"born", b"naissance", b"geburt"];

/// Whether a date-of-birth label ("dob", "d.o.b", "birth", "born",
/// "naissance" or "geburt", any case) is in `before` (the
/// bytes ahead of a date: callers pass 40; of a longer slice, the last 48
/// are looked at).
pub(crate) fn dob_label(before: &[u8]) -> bool {
    let tail = &before[before.len().saturating_sub(48)..];
    let mut a = [0u8; 48];
    a[..tail.len()].copy_from_slice(tail);
    let [_, b, s] = simd::before48(&a);
    dob_label_in(tail, b, s & s >> 1)
}

/// [`dob_label`] given where `before` has a `b` or `B` (bit `i` for byte
/// `i`) and where a doubled `s` starts (any case): every label but
/// "naissance" has a `b`, so labels are compared only around those, and
/// "naissance" only at its "ss". Bits past `before` are ignored.
#[inline]
fn dob_label_in(before: &[u8], mut b: u64, mut ss: u64) -> bool {
    let at = |k: usize, l: &[u8]| {
        before
            .get(k..k + l.len())
            .is_some_and(|x| x.eq_ignore_ascii_case(l))
    };
    while b != 0 {
        let k = b.trailing_zeros() as usize;
        b &= b - 1;
        if at(k, b"birth")
            || at(k, b"born")
            || k.checked_sub(2)
                .is_some_and(|d| at(d, b"dob") || at(d, b"geburt"))
            || k.checked_sub(4).is_some_and(|d| at(d, b"d.o.b"))
        {
            return true;
        }
    }
    while ss != 0 {
        let k = ss.trailing_zeros() as usize;
        ss &= ss - 1;
        if k.checked_sub(3).is_some_and(|d| at(d, b"naissance")) {
            return true;
        }
    }
    false
}

/// Whether `before` ends with a date-of-birth label, past the spaces, tabs
/// and `:`/`=`/`-` the pattern allows between label and date.
pub(crate) fn dob_label_adjacent(before: &[u8]) -> bool {
    let mut end = before.len();
    while end > 0 && matches!(before[end - 1], b' ' | b'\t' | b':' | b'=' | b'-') {
        end -= 1;
    }
    let w = &before[..end];
    // the labels ending with the last byte (most numbers are ruled out by
    // it), then only those compared
    let Some(&last) = w.last() else {
        return false;
    };
    let mut cand = LABEL_BY_LAST[usize::from(last)];
    while cand != 0 {
        let l = ADJACENT_LABELS
            .get(cand.trailing_zeros() as usize)
            .copied()
            .unwrap_or_default();
        cand &= cand - 1;
        if !l.is_empty() && w.len() >= l.len() && w[w.len() - l.len()..].eq_ignore_ascii_case(l) {
            return true;
        }
    }
    false
}

/// The labels a date of birth may follow directly.
const ADJACENT_LABELS: [&[u8]; 11] = [
    b"dob",
    b"d.o.b",
    b"d.o.b.",
    b"birth",
    b"birthdate",
    b"birth date",
    b"birthday",
    b"born",
    b"born on",
    b"geburtsdatum",
    b"naissance",
];

/// For each byte, the [`ADJACENT_LABELS`] (bit `i`) whose last byte it is,
/// in either case.
const LABEL_BY_LAST: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < ADJACENT_LABELS.len() {
        let l = ADJACENT_LABELS[i];
        let c = l[l.len() - 1];
        t[c.to_ascii_lowercase() as usize] |= 1 << i;
        t[c.to_ascii_uppercase() as usize] |= 1 << i;
        i += 1;
    }
    t
};

/// ASCII case-insensitive substring test; `needle` is lowercase. Checks the
/// first byte before comparing the rest (haystacks here are ≤ 40 bytes).
#[inline]
fn contains_ci(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    if hay.len() < needle.len() {
        return false;
    }
    (0..=hay.len() - needle.len()).any(|k| {
        hay[k].to_ascii_lowercase() == first
            && hay[k + 1..k + needle.len()].eq_ignore_ascii_case(rest)
    })
}

/// Largest char boundary at or below `i`.
fn floor_boundary(text: &str, mut i: usize) -> usize {
    i = i.min(text.len());
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}
