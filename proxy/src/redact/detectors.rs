//! Built-in detectors: a pattern (cheap, ASCII-bounded) and a validator that
//! confirms a candidate (checksum, ranges, context, entropy) and may narrow
//! its span.
//!
//! Patterns use `[0-9]` rather than `\d` and `(?-u:\b)` rather than `\b`:
//! Unicode classes and boundaries make the lazy DFA slow or give up on text
//! with non-ASCII bytes.

use super::trigger::Class;
use super::Action;

/// How a candidate match is confirmed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Validator {
    None,
    Email,
    Phone,
    Card,
    Ssn,
    Iban,
    Ipv4,
    Ipv6,
    Dob,
    /// Shannon entropy in bits per character at least this.
    Entropy(f64),
    /// Digits-only context check (no digit or letter glued on either side).
    Isolated,
    /// Luhn checksum over the digits of the match (custom rules).
    Luhn,
    /// ISO 13616 mod-97 over the match (custom rules).
    Mod97,
    /// OpenAI key: must not be an Anthropic key.
    NotAnthropic,
}

/// One built-in pattern.
pub(crate) struct Builtin {
    /// Detector id used in `redaction.yaml` (`detectors.<id>`).
    pub detector: &'static str,
    /// Rule name reported in findings.
    pub rule: &'static str,
    /// Finding type.
    pub kind: &'static str,
    pub pattern: &'static str,
    pub validator: Validator,
    pub enabled: bool,
    pub action: Action,
}

/// Default minimum entropy (bits/char) for generic secret assignments.
pub(crate) const DEFAULT_SECRET_ENTROPY: f64 = 3.0;

const fn b(
    detector: &'static str,
    rule: &'static str,
    kind: &'static str,
    pattern: &'static str,
    validator: Validator,
) -> Builtin {
    Builtin {
        detector,
        rule,
        kind,
        pattern,
        validator,
        enabled: true,
        action: Action::Mask,
    }
}

/// Detector ids, in the order rules are tried (earlier wins a tie).
pub(crate) const DETECTORS: &[&str] = &[
    "private_key",
    "jwt",
    "aws_key",
    "aws_secret",
    "github",
    "gitlab",
    "slack",
    "stripe",
    "google_api_key",
    "anthropic_key",
    "openai_key",
    "bearer",
    "secret_assignment",
    "email",
    "card",
    "iban",
    "ssn",
    "phone",
    "dob",
    "ipv4",
    "ipv6",
];

/// The built-in patterns. A named group `v`, when present, is the span that
/// is reported and replaced (the label around it stays).
pub(crate) fn builtins() -> Vec<Builtin> {
    use Validator as V;
    let mut v = vec![
        b(
            "private_key",
            "private_key.pem",
            "PRIVATE_KEY",
            r"-----BEGIN [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END [A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\z)",
            V::None,
        ),
        b(
            "jwt",
            "jwt",
            "JWT",
            r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            V::None,
        ),
        b(
            "aws_key",
            "aws_key.access_key_id",
            "AWS_KEY",
            r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA|ASCA)[A-Z0-9]{16}(?-u:\b)",
            V::None,
        ),
        b(
            "aws_secret",
            "aws_secret.labelled",
            "AWS_SECRET",
            r#"(?i-u:aws_?secret_?(?:access_?)?key|secret_?access_?key)["']?\s*(?:[:=]|=>)\s*["']?(?P<v>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"#,
            V::None,
        ),
        b(
            "github",
            "github.token",
            "GITHUB_TOKEN",
            r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)",
            V::None,
        ),
        b(
            "gitlab",
            "gitlab.token",
            "GITLAB_TOKEN",
            r"(?-u:\b)(?:glpat|gldt|glrt|glptt|glft|glsoat)-[A-Za-z0-9_-]{20,}",
            V::None,
        ),
        b(
            "slack",
            "slack.token",
            "SLACK_TOKEN",
            r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
            V::None,
        ),
        b(
            "slack",
            "slack.webhook",
            "SLACK_TOKEN",
            r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_-]{20,}",
            V::None,
        ),
        b(
            "stripe",
            "stripe.key",
            "STRIPE_KEY",
            r"(?-u:\b)(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}(?-u:\b)|(?-u:\b)whsec_[A-Za-z0-9]{24,}(?-u:\b)",
            V::None,
        ),
        b(
            "google_api_key",
            "google_api_key",
            "GOOGLE_API_KEY",
            r"(?-u:\b)(?P<v>AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|\z)",
            V::None,
        ),
        b(
            "anthropic_key",
            "anthropic_key",
            "ANTHROPIC_KEY",
            r"(?-u:\b)sk-ant-[A-Za-z0-9_-]{32,}",
            V::None,
        ),
        b(
            "openai_key",
            "openai_key",
            "OPENAI_KEY",
            r"(?-u:\b)sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_-]{32,}",
            V::NotAnthropic,
        ),
        b(
            "bearer",
            "bearer.token",
            "BEARER_TOKEN",
            r"(?i-u:\bbearer)[ \t]+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)",
            V::None,
        ),
        b(
            "secret_assignment",
            "secret_assignment",
            "SECRET",
            r#"(?i-u:\b(?:[a-z0-9]+[_-])*(?:password|passwd|passphrase|pwd|secret|client_secret|secret_key|api_key|apikey|access_token|auth_token|refresh_token|private_key))["']?[ \t]*(?:[:=]|=>)[ \t]*["']?(?P<v>[^\s"'\\,;\[\]{}<>()`]{8,128})"#,
            V::Entropy(DEFAULT_SECRET_ENTROPY),
        ),
        b(
            "email",
            "email",
            "EMAIL",
            r"(?-u:\b)[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?-u:\b)",
            V::Email,
        ),
        b(
            "card",
            "card.pan",
            "CARD",
            r"(?-u:\b)[0-9]+(?:[ -][0-9]+)*(?-u:\b)",
            V::Card,
        ),
        b(
            "iban",
            "iban",
            "IBAN",
            r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,32}(?-u:\b)",
            V::Iban,
        ),
        b(
            "ssn",
            "ssn.separated",
            "SSN",
            r"(?-u:\b)[0-9]{3}([- ])[0-9]{2}([- ])[0-9]{4}(?-u:\b)",
            V::Ssn,
        ),
        b(
            "ssn",
            "ssn.labelled",
            "SSN",
            r"(?i-u:\b(?:ssn|social security(?: number| no\.?)?|ss#))[ \t]*[:#]?[ \t]*(?P<v>[0-9]{9})(?-u:\b)",
            V::Ssn,
        ),
        b(
            "phone",
            "phone.e164",
            "PHONE",
            r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,5}\)?){1,6}(?-u:\b)",
            V::Phone,
        ),
        b(
            "phone",
            "phone.nanp",
            "PHONE",
            r"(?:\([2-9][0-9]{2}\)[ .-]?|(?-u:\b)[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
            V::Phone,
        ),
        b(
            "phone",
            "phone.national",
            "PHONE",
            r"(?-u:\b)0[1-9][0-9]{0,4}(?:[ -][0-9]{2,6}){1,4}(?-u:\b)",
            V::Phone,
        ),
        b(
            "dob",
            "dob.labelled",
            "DOB",
            r"(?i-u:\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|birthday|born(?: on)?|geburtsdatum|date de naissance))[ \t]*[:=-]?[ \t]*(?P<v>[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|[0-9]{1,2}[./-][0-9]{1,2}[./-][0-9]{2,4}|[0-9]{1,2}(?:st|nd|rd|th)? (?i-u:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?,? [0-9]{4}|(?i-u:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? [0-9]{1,2}(?:st|nd|rd|th)?,? [0-9]{4})",
            V::Dob,
        ),
        b(
            "ipv4",
            "ipv4",
            "IPV4",
            r"(?-u:\b)[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(?-u:\b)",
            V::Ipv4,
        ),
        b(
            "ipv6",
            "ipv6",
            "IPV6",
            r"(?:[0-9A-Fa-f]{1,4}|:)?(?::[0-9A-Fa-f]{0,4}){2,7}(?:%[0-9A-Za-z]+)?",
            V::Ipv6,
        ),
    ];
    for x in &mut v {
        if x.detector == "ipv4" || x.detector == "ipv6" {
            x.enabled = false;
        }
    }
    v
}

/// The trigger a built-in detector runs behind (see `trigger`).
pub(crate) fn class_of(detector: &str) -> Class {
    match detector {
        "private_key" => Class::Pem,
        "aws_secret" | "secret_assignment" => Class::Assign,
        "email" => Class::Email,
        "card" | "iban" | "ssn" | "phone" | "dob" | "ipv4" => Class::Digits,
        "ipv6" => Class::Always,
        _ => Class::Token,
    }
}

/// Confirm a candidate `s..e` in `text`; returns the (possibly narrowed) span.
pub(crate) fn validate(v: Validator, text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let m = &text[s..e];
    let ok = match v {
        Validator::None => true,
        Validator::Email => email_ok(m),
        Validator::Phone => return phone(text, s, e),
        Validator::Card => return card(text, s, e),
        Validator::Ssn => isolated(text, s, e) && ssn_ok(m),
        Validator::Iban => return iban(text, s, e),
        Validator::Ipv4 => isolated_dots(text, s, e) && ipv4_ok(m),
        Validator::Ipv6 => return ipv6(text, s, e),
        Validator::Dob => dob_ok(m),
        Validator::Entropy(min) => entropy(m) >= min && !placeholder(m) && !our_token(text, s, e),
        Validator::Isolated => isolated(text, s, e),
        Validator::Luhn => {
            let d: Vec<u8> = m
                .bytes()
                .filter(u8::is_ascii_digit)
                .map(|c| c - b'0')
                .collect();
            !d.is_empty() && luhn(&d)
        }
        Validator::Mod97 => mod97(m.replace(' ', "").as_bytes()),
        Validator::NotAnthropic => !m.starts_with("sk-ant-"),
    };
    ok.then_some((s, e))
}

fn before(text: &str, s: usize) -> Option<u8> {
    s.checked_sub(1)
        .and_then(|i| text.as_bytes().get(i).copied())
}

/// No letter/digit glued on, and not a piece of a longer dotted/dashed
/// number (`2024-01-15-1234`, `v1.2.3.4.5`).
fn isolated(text: &str, s: usize, e: usize) -> bool {
    let b = text.as_bytes();
    let pre = before(text, s);
    let pre2 = s.checked_sub(2).and_then(|i| b.get(i).copied());
    let post = b.get(e).copied();
    let post2 = b.get(e + 1).copied();
    let glued = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
    let joined = |sep: Option<u8>, d: Option<u8>| {
        sep.is_some_and(|c| matches!(c, b'-' | b'.' | b'/' | b':' | b'+'))
            && d.is_some_and(|c| c.is_ascii_digit())
    };
    !glued(pre) && !glued(post) && !joined(pre, pre2) && !joined(post, post2)
}

/// A digit group right next to the candidate, across one space: the
/// candidate is a slice of a longer grouped number (a card, an account).
fn digit_group_neighbour(text: &str, s: usize, e: usize) -> bool {
    let b = text.as_bytes();
    let word = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if e < b.len() && b[e] == b' ' {
        let mut k = e + 1;
        while k < b.len() && b[k].is_ascii_digit() {
            k += 1;
        }
        if k > e + 1 && !word(b.get(k)) {
            return true;
        }
    }
    if s >= 2 && b[s - 1] == b' ' {
        let mut k = s - 1;
        while k > 0 && b[k - 1].is_ascii_digit() {
            k -= 1;
        }
        if k < s - 1 && !word(k.checked_sub(1).and_then(|i| b.get(i))) {
            return true;
        }
    }
    false
}

fn isolated_dots(text: &str, s: usize, e: usize) -> bool {
    isolated(text, s, e)
}

fn email_ok(m: &str) -> bool {
    let b = m.as_bytes();
    let Some(at) = memchr::memrchr(b'@', b) else {
        return false;
    };
    let (local, domain) = (&b[..at], &b[at + 1..]);
    local.first() != Some(&b'.')
        && local.last() != Some(&b'.')
        && !local.windows(2).any(|w| w == b"..")
        && domain.len() <= 253
        && domain.contains(&b'.')
}

/// The digits of a candidate (values 0–9), kept on the stack: candidates
/// are short, and past 32 digits no detector's length test can pass.
struct Digits {
    buf: [u8; 32],
    len: usize,
}

impl std::ops::Deref for Digits {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len.min(32)]
    }
}

impl Digits {
    /// Count, including digits past the 32 kept.
    fn count(&self) -> usize {
        self.len
    }
}

fn digits(m: &str) -> Digits {
    let mut d = Digits {
        buf: [0; 32],
        len: 0,
    };
    for c in m.bytes().filter(u8::is_ascii_digit) {
        if let Some(x) = d.buf.get_mut(d.len) {
            *x = c - b'0';
        }
        d.len += 1;
    }
    d
}

/// Phone: an international number may have run on into a following group
/// of digits, so try it shorter, group by group; a national one must stand
/// alone (not a slice of a longer grouped number).
fn phone(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let m = &text[s..e];
    if m.starts_with('+') {
        let b = m.as_bytes();
        let mut end = b.len();
        while end > 1 {
            let d = b[..end].iter().filter(|c| c.is_ascii_digit()).count();
            if (8..=15).contains(&d) && b[end - 1].is_ascii_digit() && isolated(text, s, s + end) {
                return Some((s, s + end));
            }
            // step back to the end of the previous digit group
            end -= 1;
            while end > 1 && b[end - 1].is_ascii_digit() {
                end -= 1;
            }
            while end > 1 && !b[end - 1].is_ascii_digit() {
                end -= 1;
            }
        }
        return None;
    }
    (isolated(text, s, e) && !digit_group_neighbour(text, s, e) && phone_ok(m)).then_some((s, e))
}

fn phone_ok(m: &str) -> bool {
    let d = digits(m);
    if m.starts_with('+') {
        (8..=15).contains(&d.count())
    } else if m.starts_with('(') || d.first().is_some_and(|&c| c >= 2) {
        d.count() == 10
    } else {
        (9..=12).contains(&d.count())
    }
}

pub(crate) fn luhn(d: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &x) in d.iter().rev().enumerate() {
        let mut v = u32::from(x);
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Known issuer prefixes (Visa, Mastercard, Amex, Discover, JCB, Diners,
/// UnionPay, Maestro), with their lengths.
pub(crate) fn card_iin_ok(d: &[u8]) -> bool {
    let n = d.len();
    let p = |k: usize| d.iter().take(k).fold(0u32, |a, &x| a * 10 + u32::from(x));
    match d.first() {
        Some(4) => matches!(n, 13 | 16 | 19),
        Some(5) => {
            (51..=55).contains(&p(2)) && n == 16
                || (50..=59).contains(&p(2)) && (12..=19).contains(&n)
        }
        Some(2) => (2221..=2720).contains(&p(4)) && n == 16,
        Some(3) => {
            (matches!(p(2), 34 | 37) && n == 15)
                || ((3528..=3589).contains(&p(4)) && (16..=19).contains(&n))
                || ((matches!(p(2), 36 | 38 | 39) || (300..=305).contains(&p(3)))
                    && (14..=19).contains(&n))
        }
        Some(6) => {
            (16..=19).contains(&n)
                && (p(4) == 6011
                    || p(2) == 65
                    || (644..=649).contains(&p(3))
                    || p(2) == 62
                    || p(2) == 67
                    || p(2) == 63)
        }
        _ => false,
    }
}

/// Card: try every run of whole digit groups (13–19 digits) inside the
/// candidate, longest first, so a card glued to a neighbouring number by a
/// space is still found.
pub(crate) fn card(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let m = &text.as_bytes()[s..e];
    // most candidates are short numbers (years, amounts, order numbers)
    if m.len() < 13 || m.iter().filter(|c| c.is_ascii_digit()).count() < 13 {
        return None;
    }
    // each digit doubled as Luhn does it
    const DBL: [u8; 10] = [0, 2, 4, 6, 8, 1, 3, 5, 7, 9];
    // every run of whole digit groups, from each group start, up to 19 digits
    let mut a = 0;
    while a < m.len() {
        if !m[a].is_ascii_digit() {
            a += 1;
            continue;
        }
        // no issuer number starts with 0, 1, 7, 8 or 9 (`card_iin_ok`):
        // no run from this group can be a card
        if !(b'2'..=b'6').contains(&m[a]) {
            while a < m.len() && m[a].is_ascii_digit() {
                a += 1;
            }
            continue;
        }
        let mut d = [0u8; 19];
        // sums of the digits at even and odd places, as they are and
        // doubled: the Luhn sum of any prefix without a second pass
        let (mut plain, mut dbl) = ([0u32; 2], [0u32; 2]);
        let mut n = 0usize;
        let mut best: Option<(usize, usize)> = None;
        let mut k = a;
        'grow: while k < m.len() {
            while k < m.len() && m[k].is_ascii_digit() {
                let Some(x) = d.get_mut(n) else {
                    break 'grow;
                };
                let v = m[k] - b'0';
                *x = v;
                plain[n & 1] += u32::from(v);
                dbl[n & 1] += u32::from(DBL[usize::from(v)]);
                n += 1;
                k += 1;
            }
            // from the right, every second digit is doubled: with an even
            // count those at even places, with an odd count the odd ones
            let sum = dbl[n & 1] + plain[(n & 1) ^ 1];
            if n >= 13
                && sum.is_multiple_of(10)
                && card_iin_ok(&d[..n])
                && isolated(text, s + a, s + k)
            {
                best = Some((s + a, s + k));
            }
            while k < m.len() && !m[k].is_ascii_digit() {
                k += 1;
            }
        }
        if best.is_some() {
            return best;
        }
        while a < m.len() && m[a].is_ascii_digit() {
            a += 1;
        }
    }
    None
}

/// [`card`] the plain way, from the digit groups of the candidate and a
/// whole Luhn pass per run of them: the reference its test compares it
/// with.
#[cfg(test)]
pub(crate) fn card_by_luhn(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let m = &text.as_bytes()[s..e];
    let mut groups = Vec::new();
    let mut k = 0;
    while k < m.len() {
        let a = k;
        while k < m.len() && m[k].is_ascii_digit() {
            k += 1;
        }
        if k > a {
            groups.push((a, k));
        }
        k = k.max(a + 1);
    }
    // from the first group start that has a card, the longest run of
    // whole groups (at most 19 digits) that is one
    groups.iter().enumerate().find_map(|(g, &(a, _))| {
        let mut d: Vec<u8> = Vec::new();
        let mut best = None;
        for &(ga, gb) in &groups[g..] {
            d.extend(m[ga..gb].iter().map(|c| c - b'0'));
            if d.len() > 19 {
                break;
            }
            if d.len() >= 13 && card_iin_ok(&d) && luhn(&d) && isolated(text, s + a, s + gb) {
                best = Some((s + a, s + gb));
            }
        }
        best
    })
}

fn ssn_ok(m: &str) -> bool {
    let d = digits(m);
    if d.count() != 9 {
        return false;
    }
    // both separators, if any, must be the same
    let mut seps = m.bytes().filter(|c| !c.is_ascii_digit());
    if let (Some(x), Some(y), None) = (seps.next(), seps.next(), seps.next()) {
        if x != y {
            return false;
        }
    }
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = u32::from(d[3]) * 10 + u32::from(d[4]);
    let serial = d[5..].iter().fold(0u32, |a, &x| a * 10 + u32::from(x));
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0
}

/// Registered IBAN lengths per country (ISO 13616 registry, common subset;
/// unknown countries accept 15–34).
pub(crate) const IBAN_LENGTHS: &[([u8; 2], u8)] = &[
    (*b"AD", 24),
    (*b"AE", 23),
    (*b"AL", 28),
    (*b"AT", 20),
    (*b"AZ", 28),
    (*b"BA", 20),
    (*b"BE", 16),
    (*b"BG", 22),
    (*b"BH", 22),
    (*b"BR", 29),
    (*b"CH", 21),
    (*b"CR", 22),
    (*b"CY", 28),
    (*b"CZ", 24),
    (*b"DE", 22),
    (*b"DK", 18),
    (*b"DO", 28),
    (*b"EE", 20),
    (*b"EG", 29),
    (*b"ES", 24),
    (*b"FI", 18),
    (*b"FO", 18),
    (*b"FR", 27),
    (*b"GB", 22),
    (*b"GE", 22),
    (*b"GI", 23),
    (*b"GL", 18),
    (*b"GR", 27),
    (*b"GT", 28),
    (*b"HR", 21),
    (*b"HU", 28),
    (*b"IE", 22),
    (*b"IL", 23),
    (*b"IS", 26),
    (*b"IT", 27),
    (*b"JO", 30),
    (*b"KW", 30),
    (*b"KZ", 20),
    (*b"LB", 28),
    (*b"LI", 21),
    (*b"LT", 20),
    (*b"LU", 20),
    (*b"LV", 21),
    (*b"MC", 27),
    (*b"MD", 24),
    (*b"ME", 22),
    (*b"MK", 19),
    (*b"MR", 27),
    (*b"MT", 31),
    (*b"MU", 30),
    (*b"NL", 18),
    (*b"NO", 15),
    (*b"PK", 24),
    (*b"PL", 28),
    (*b"PS", 29),
    (*b"PT", 25),
    (*b"QA", 29),
    (*b"RO", 24),
    (*b"RS", 22),
    (*b"SA", 24),
    (*b"SE", 24),
    (*b"SI", 19),
    (*b"SK", 24),
    (*b"SM", 27),
    (*b"TN", 24),
    (*b"TR", 26),
    (*b"UA", 29),
    (*b"VG", 24),
    (*b"XK", 20),
];

/// [`IBAN_LENGTHS`] by country code, a slot per pair of capitals (0: not
/// listed): one load, where a `match` on the code compared strings.
const IBAN_LEN: [u8; 26 * 26] = {
    let mut t = [0u8; 26 * 26];
    let mut i = 0;
    while i < IBAN_LENGTHS.len() {
        let ([a, b], l) = IBAN_LENGTHS[i];
        t[(a - b'A') as usize * 26 + (b - b'A') as usize] = l;
        i += 1;
    }
    t
};

pub(crate) fn iban_len(cc: &[u8]) -> Option<usize> {
    match *cc {
        [a @ b'A'..=b'Z', b @ b'A'..=b'Z'] => {
            let l = IBAN_LEN[usize::from(a - b'A') * 26 + usize::from(b - b'A')];
            (l != 0).then_some(usize::from(l))
        }
        _ => None,
    }
}

pub(crate) fn mod97(b: &[u8]) -> bool {
    if b.len() < 15 || b.len() > 34 || !b.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    let mut r = 0u32;
    for &c in b[4..].iter().chain(&b[..4]) {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c.to_ascii_uppercase() - b'A') + 10
        };
        r = if v >= 10 {
            (r * 100 + v) % 97
        } else {
            (r * 10 + v) % 97
        };
    }
    r == 1
}

/// IBAN: take as many characters as the country's registered length (the
/// pattern may have run on into a following capitalised word), check mod-97.
fn iban(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let m = text.as_bytes().get(s..e)?;
    let cc = m.get(..2)?;
    // the first 34 non-space characters and where each ends in `m` (a
    // match is at most 68 bytes: 34 characters, a space before each)
    let mut chars = [0u8; 34];
    let mut ends = [0u16; 34];
    let mut n = 0;
    for (i, &c) in m.iter().enumerate().take(u16::MAX.into()) {
        if c == b' ' {
            continue;
        }
        if n == 34 {
            break;
        }
        chars[n] = c;
        ends[n] = (i + 1) as u16;
        n += 1;
    }
    let (hi, lo) = match iban_len(cc) {
        Some(l) => (l, l),
        None => (34, 15),
    };
    for l in (lo..=hi).rev() {
        if n < l {
            continue;
        }
        let end = usize::from(ends[l - 1]);
        // must end on a group boundary
        if let Some(&nx) = m.get(end) {
            if nx != b' ' {
                continue;
            }
        }
        if mod97(&chars[..l]) && isolated(text, s, s + end) {
            return Some((s, s + end));
        }
    }
    None
}

fn ipv4_ok(m: &str) -> bool {
    m.split('.').all(|p| {
        !p.is_empty()
            && (p == "0" || !p.starts_with('0'))
            && p.parse::<u16>().is_ok_and(|v| v <= 255)
    })
}

fn ipv6(text: &str, s: usize, e: usize) -> Option<(usize, usize)> {
    let m = &text[s..e];
    let addr = m.split('%').next().unwrap_or(m);
    if addr.parse::<std::net::Ipv6Addr>().is_err() || addr.matches(':').count() < 2 {
        return None;
    }
    // bare "::" and times like "10:30:00" are not addresses
    if addr == "::" || !addr.bytes().any(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let b = text.as_bytes();
    let glued =
        |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_alphanumeric() || *c == b':' || *c == b'.');
    if glued(s.checked_sub(1).and_then(|i| b.get(i))) || glued(b.get(e)) {
        return None;
    }
    Some((s, e))
}

fn dob_ok(m: &str) -> bool {
    let nums: Vec<u32> = m
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect();
    match nums.as_slice() {
        [y, mo, d] if *y > 1000 => (1..=12).contains(mo) && (1..=31).contains(d),
        [a, b2, y] => {
            (1..=31).contains(a)
                && (1..=31).contains(b2)
                && (*a <= 12 || *b2 <= 12)
                && (*y < 100 || (1850..=2100).contains(y))
        }
        [d, y] => (1..=31).contains(d) && (1850..=2100).contains(y),
        _ => false,
    }
}

/// Shannon entropy in bits per character.
pub(crate) fn entropy(m: &str) -> f64 {
    let mut counts = [0u32; 256];
    let mut n = 0u32;
    for c in m.bytes() {
        counts[c as usize] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let nf = f64::from(n);
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / nf;
            -p * p.log2()
        })
        .sum()
}

/// The hex of one of our own `[TYPE:xxxxxxxx]` hash tokens (so a second
/// pass over redacted output changes nothing).
fn our_token(text: &str, s: usize, e: usize) -> bool {
    let b = text.as_bytes();
    if b.get(e) != Some(&b']') || s == 0 || b[s - 1] != b':' {
        return false;
    }
    let head = &b[s.saturating_sub(41)..s - 1];
    match head.iter().rposition(|&c| c == b'[') {
        Some(k) => head[k + 1..]
            .iter()
            .all(|&c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_'),
        None => false,
    }
}

/// Obvious placeholders that are not secrets.
fn placeholder(m: &str) -> bool {
    let l = m.to_ascii_lowercase();
    l.starts_with("${")
        || l.starts_with("env.")
        || l.contains("example")
        || l.contains("placeholder")
        || l.contains("redacted")
        || l.contains("your_")
        || l.contains("xxxx")
        || l.contains("****")
}
