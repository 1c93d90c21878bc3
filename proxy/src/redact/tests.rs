//! Unit tests of the redact module.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

pub(crate) fn chat(content: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": content}]
    }))
    .unwrap()
}

pub(crate) fn req(body: &[u8]) -> ScanRequest<'_> {
    ScanRequest {
        body,
        content_type: Some("application/json"),
        content_encoding: None,
        path: "/v1/chat/completions",
        app: "test-app",
        max_bytes: 1 << 20,
        overrides: None,
    }
}

#[test]
fn email_is_masked() {
    let r = Redactor::builtin();
    let body = chat("mail me at alice@example.com please");
    let out = r.redact(&req(&body)).unwrap();
    let s = String::from_utf8(out.body.unwrap()).unwrap();
    assert!(s.contains("[REDACTED:EMAIL]"), "{s}");
    assert!(!s.contains("alice@"));
}

#[test]
#[ignore = "timing probe, run by hand"]
fn trigger_speed_probe() {
    let words = [
        "the",
        "quarterly",
        "report",
        "shows",
        "that",
        "revenue",
        "grew",
        "café",
        "naïve",
        "“quoted”",
        "it’s",
        "Q3",
        "12%",
        "v2.14.3",
        "2024-03-15",
        "order #4821",
        "ticket JIRA-4412",
        "$1,249.00",
        "p99",
        "184ms",
        "550e8400-e29b-41d4-a716-446655440000",
        "9fceb02d0ae598e95dc970b74767f19372d61af8",
        "and",
        "we",
        "would",
        "like",
    ];
    let text: String = (0..12000)
        .map(|i| words[(i * 7 + i / 3) % words.len()])
        .collect::<Vec<_>>()
        .join(" ");
    let mut w = trigger::Windows::default();
    let n = 2000;
    let t = std::time::Instant::now();
    for _ in 0..n {
        trigger::find(std::hint::black_box(&text), 7, false, &mut w);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "find: {:.0} MB/s over {} bytes",
        (n * text.len()) as f64 / s / 1e6,
        text.len()
    );
    let plain: String = text.chars().filter(|c| !c.is_ascii_digit()).collect();
    let t = std::time::Instant::now();
    for _ in 0..n {
        trigger::find(std::hint::black_box(&plain), 7, false, &mut w);
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "find without digits: {:.0} MB/s",
        (n * plain.len()) as f64 / s / 1e6
    );
    let mut nm = normalize::Norm::default();
    let raw = serde_json::to_string(&text.replace(" and ", "\nand ")).unwrap();
    let t = std::time::Instant::now();
    for _ in 0..n {
        normalize::normalize(
            std::hint::black_box(&raw[1..raw.len() - 1]),
            0,
            true,
            &mut nm,
        );
    }
    let s = t.elapsed().as_secs_f64();
    println!("normalize: {:.0} MB/s", (n * raw.len()) as f64 / s / 1e6);
}

#[test]
fn nfkc_fast_ranges_agree_with_tables() {
    use unicode_normalization::UnicodeNormalization;
    for r in [
        0xC0u32..=0xFF,
        0x100..=0x17E,
        0x391..=0x3C9,
        0x410..=0x44F,
        0x2010..=0x2023,
        0x4E00..=0x4FFF,
        0xAC00..=0xAD00,
    ] {
        for u in r {
            let Some(c) = char::from_u32(u) else { continue };
            let mut n = normalize::Norm::default();
            let s = c.to_string();
            normalize::normalize(&s, 0, false, &mut n);
            let nfkc: String = std::iter::once(c).nfkc().collect();
            assert_eq!(n.text, nfkc, "U+{u:04X}");
        }
    }
}

/// Long strings with escapes of every kind, valid and not, at every
/// offset within a mask word and after stretches of every length: accepted
/// exactly when `serde_json` accepts them, with the span and escape flag
/// of the one string.
#[test]
fn walker_steps_over_long_strings_as_serde_json_reads_them() {
    struct V(Vec<(usize, usize, bool)>);
    impl json::Visitor for V {
        fn string(&mut self, s: usize, e: usize, esc: bool, _: bool, _: &[json::Seg]) -> bool {
            self.0.push((s, e, esc));
            false
        }
    }
    const PIECES: &[&str] = &[
        "plain prose ",
        "é—",
        r"\n",
        r"\n",
        r#"\""#,
        r"\\",
        r"\/",
        r"\t",
        r"\u0041",
        r"\uD83D\uDE00",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz",
        "x",
        "yz",
        // stretches of a mask word's length and one less
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqr",
        "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq",
    ];
    const BAD: &[&str] = &[r"\x", r"\u12", "\u{1}", r"\uDE00", "\t", r"\"];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut ok, mut refused) = (0, 0);
    for round in 0..4000 {
        let mut content = String::new();
        let len = 40 + (next() % 400) as usize;
        while content.len() < len {
            let x = next();
            if x % 97 == 0 {
                content.push_str(BAD[(x / 97 % BAD.len() as u64) as usize]);
            } else {
                content.push_str(PIECES[(x % PIECES.len() as u64) as usize]);
            }
        }
        // the string starts anywhere in a mask word
        let pad = " ".repeat(round % 64);
        let doc = format!("{pad}[\"{content}\"]");
        let mut v = V(Vec::new());
        let ours = json::walk(doc.as_bytes(), &mut v);
        let theirs = serde_json::from_str::<serde_json::Value>(&doc);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "{doc:?}");
        if ours.is_ok() {
            let s = pad.len() + 2;
            assert_eq!(
                v.0,
                vec![(s, s + content.len(), content.contains('\\'))],
                "{doc:?}"
            );
            ok += 1;
        } else {
            refused += 1;
        }
    }
    assert!(ok > 2000 && refused > 300, "{ok} {refused}");
}

#[test]
fn walker_reports_string_spans_and_paths() {
    struct V(Vec<(String, bool, String)>);
    impl json::Visitor for V {
        fn string(
            &mut self,
            s: usize,
            e: usize,
            esc: bool,
            is_key: bool,
            path: &[json::Seg],
        ) -> bool {
            let b = br#"{"a":[1,"x\"y",{"k":true}],"b c":null}"#;
            let raw = String::from_utf8_lossy(&b[s..e]).into_owned();
            let _ = esc;
            self.0.push((raw, is_key, json::render_path(b, path)));
            false
        }
    }
    let mut v = V(Vec::new());
    json::walk(br#"{"a":[1,"x\"y",{"k":true}],"b c":null}"#, &mut v).unwrap();
    let got: Vec<_> = v.0.iter().map(|(r, k, p)| format!("{r}|{k}|{p}")).collect();
    assert_eq!(
        got,
        vec![
            "a|true|$",
            "x\\\"y|false|$.a[1]",
            "k|true|$.a[2]",
            "b c|true|$"
        ]
    );
}

#[test]
fn normalised_offsets_map_back_to_raw_units() {
    let raw = r"ab\u0040c\u200bd\\u0041\n\uff11";
    let mut n = normalize::Norm::default();
    normalize::normalize(raw, 10, true, &mut n);
    assert_eq!(n.text, "ab@cdA\n1");
    // "@" came from the 6-byte escape at raw offset 2
    assert_eq!(n.raw_span(2, 3), (12, 18));
    // "cd" spans the zero-width space between them
    assert_eq!(n.raw_span(3, 5), (18, 26));
    // "A" came from the doubly escaped \\u0041
    assert_eq!(n.raw_span(5, 6), (26, 33));
    // full-width one
    assert_eq!(n.raw_span(7, 8), (35, 41));
}

/// Every normalised range maps back to exactly the raw bytes it came
/// from, on strings built from pieces whose raw and normalised forms are
/// known: copied bytes map one to one, a replaced unit maps whole.
#[test]
fn normalised_ranges_map_to_their_raw_pieces() {
    // (raw, normalised): copied, escaped, dropped, changed, two levels down
    const PIECES: &[(&str, &str)] = &[
        ("a", "a"),
        ("xy", "xy"),
        ("é", "é"),
        ("—", "—"),
        (r"\n", "\n"),
        (r"\t", "\t"),
        (r"\u0040", "@"),
        ("\u{200b}", ""),
        (r"\u200b", ""),
        ("１", "1"),
        ("ﬁ", "fi"),
        (r"\\u0041", "A"),
        (r"\\n", "\n"),
    ];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut checked = 0;
    for _ in 0..200 {
        let (mut raw, mut want_text) = (String::new(), String::new());
        // per normalised byte: the raw span it maps to
        let mut map: Vec<(usize, usize)> = Vec::new();
        for _ in 0..12 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let (r, n) = PIECES[(seed % PIECES.len() as u64) as usize];
            let at = 1000 + raw.len();
            let copied = r == n;
            for k in 0..n.len() {
                map.push(if copied {
                    (at + k, at + k + 1)
                } else {
                    (at, at + r.len())
                });
            }
            raw.push_str(r);
            want_text.push_str(n);
        }
        let mut norm = normalize::Norm::default();
        normalize::normalize(&raw, 1000, true, &mut norm);
        assert_eq!(norm.text, want_text, "{raw:?}");
        let t = &norm.text;
        for s in (0..t.len()).filter(|&s| t.is_char_boundary(s)) {
            let mut cur = 0;
            for e in (s + 1..=t.len()).filter(|&e| t.is_char_boundary(e)) {
                let want = (map[s].0, map[e - 1].1);
                assert_eq!(norm.raw_span(s, e), want, "{raw:?} {s}..{e}");
                assert_eq!(norm.raw_span_from(s, e, &mut cur), want, "{raw:?} {s}..{e}");
                checked += 1;
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

/// The cursor lookup finds what a fresh search finds, for spans asked for
/// in rising order (as `record` does) and for one asked out of order.
#[test]
fn raw_span_cursor_agrees_with_search() {
    let raw = r"a\nb\u00e9 c\u200bd\\u0041 \uff11\uff12x\ty \u2028 z";
    let mut n = normalize::Norm::default();
    normalize::normalize(raw, 3, true, &mut n);
    let len = n.text.len();
    let mut checked = 0;
    for step in 1..4 {
        let mut cur = 0;
        let mut s = 0;
        while s < len {
            let e = (s + step).min(len);
            if n.text.is_char_boundary(s) && n.text.is_char_boundary(e) {
                assert_eq!(
                    n.raw_span_from(s, e, &mut cur),
                    n.raw_span(s, e),
                    "{s}..{e}"
                );
                checked += 1;
            }
            s = e;
        }
        // backwards: the cursor is past, the lookup must search again
        assert_eq!(n.raw_span_from(0, 1, &mut cur), n.raw_span(0, 1));
    }
    assert!(checked > 20, "{checked}");
}

/// The card validator skips digit groups that start with 0, 1, 7, 8 or 9:
/// no issuer prefix it knows does.
#[test]
fn no_card_issuer_starts_with_0_1_7_8_9() {
    let mut ok = 0;
    for p in 0..10_000u32 {
        let head = [p / 1000, p / 100 % 10, p / 10 % 10, p % 10].map(|x| x as u8);
        for n in 12..=19 {
            let mut d = vec![0u8; n];
            d[..4].copy_from_slice(&head);
            if detectors::card_iin_ok(&d) {
                assert!((2..=6).contains(&head[0]), "{head:?} length {n}");
                ok += 1;
            }
        }
    }
    assert!(ok > 1000, "{ok}");
}

/// The label test by last byte answers what comparing every label does.
#[test]
fn dob_label_by_last_byte_agrees_with_every_label() {
    const LABELS: &[&str] = &[
        "dob",
        "d.o.b",
        "d.o.b.",
        "birth",
        "birthdate",
        "birth date",
        "birthday",
        "born",
        "born on",
        "geburtsdatum",
        "naissance",
    ];
    let naive = |before: &[u8]| {
        let mut end = before.len();
        while end > 0 && matches!(before[end - 1], b' ' | b'\t' | b':' | b'=' | b'-') {
            end -= 1;
        }
        let w = &before[..end];
        LABELS.iter().any(|l| {
            w.len() >= l.len() && w[w.len() - l.len()..].eq_ignore_ascii_case(l.as_bytes())
        })
    };
    let mut found = 0;
    let heads = ["", "my ", "x", "the ", "DATE OF ", "re"];
    let tails = ["", ":", " ", ": ", "=", " - ", "\t", "s", "e", ".", "n"];
    for l in LABELS
        .iter()
        .chain(&["bor", "irth", "ob", "date", "on", "nce", "day"])
    {
        for up in [false, true] {
            let l = if up {
                l.to_ascii_uppercase()
            } else {
                l.to_string()
            };
            for h in heads {
                for t in tails {
                    let before = format!("{h}{l}{t}");
                    let want = naive(before.as_bytes());
                    assert_eq!(
                        trigger::dob_label_adjacent(before.as_bytes()),
                        want,
                        "{before:?}"
                    );
                    found += usize::from(want);
                }
            }
        }
    }
    assert!(found > 100, "{found}");
}

/// The card validator's running Luhn sums answer what a Luhn pass per
/// candidate answers, over every span of generated strings of cards
/// (valid and one digit off), digit groups and separators.
#[test]
fn card_validator_agrees_with_a_luhn_pass_per_candidate() {
    const PIECES: &[&str] = &[
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
        "6011111111111117",
        "3530111333300000",
        "4012888888881881",
        "2221000000000009",
        "4111111111111112",
        "4222222222222",
        "6",
        "35",
        "1234",
        "0",
        " ",
        " ",
        "-",
        "x",
    ];
    let mut next = strings_of(PIECES, 44, 0x5eed_ca4d);
    let mut found = 0;
    for _ in 0..1500 {
        let t = next();
        for s in 0..t.len() {
            for e in s + 1..=t.len() {
                let want = detectors::card_by_luhn(&t, s, e);
                assert_eq!(detectors::card(&t, s, e), want, "{t:?} {s}..{e}");
                found += usize::from(want.is_some());
            }
        }
    }
    assert!(found > 10_000, "{found}");
}

#[test]
fn luhn_and_mod97() {
    assert!(detectors::luhn(&[
        4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1
    ]));
    assert!(!detectors::luhn(&[
        4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2
    ]));
    assert!(detectors::mod97(b"DE89370400440532013000"));
    assert!(!detectors::mod97(b"DE89370400440532013001"));
    assert!(detectors::entropy("aaaa") < 0.1);
}

#[test]
fn builtin_compiles_every_pattern() {
    let r = Redactor::builtin();
    let enabled = detectors::builtins().iter().filter(|b| b.enabled).count();
    // plus the JSON-key secret rule
    assert_eq!(r.rules().len(), enabled + 1);
}

/// The trigger pass skips most digit clusters from their shape alone; each
/// skip must leave every shape a digit rule matches with its window.
#[test]
fn digit_shapes_keep_every_detector() {
    let r = Redactor::builtin();
    let cases: &[(&str, &str)] = &[
        ("+44 20 7946 0958", "PHONE"),
        ("call +1 (415) 555-2671 today", "PHONE"),
        ("office (415) 555-2671", "PHONE"),
        ("ring 020 7946 0958 now", "PHONE"),
        ("appelez le 01 23 45 67 89", "PHONE"),
        ("mobil 0151-2345 6789", "PHONE"),
        ("ssn 123-45-6789", "SSN"),
        ("SSN: 123456789", "SSN"),
        ("card 4111 1111 1111 1111", "CARD"),
        ("card:\n4111111111111111", "CARD"),
        ("amex 3782-822463-10005", "CARD"),
        ("iban DE89 3704 0044 0532 0130 00", "IBAN"),
        ("date of birth: 1990-01-02", "DOB"),
        ("DOB 02/01/90", "DOB"),
        ("born on 3 March 1990.", "DOB"),
        ("Birthday: March 3rd, 1990", "DOB"),
        ("d.o.b.=12.03.1985", "DOB"),
    ];
    for (text, kind) in cases {
        let out = r.redact(&req(&chat(text))).unwrap();
        assert!(
            out.findings.iter().any(|f| &*f.kind == *kind),
            "{kind} not found in {text:?}: {:?}",
            out.findings
        );
    }
    // look-alikes the shapes rule out stay untouched
    for text in [
        "release v2.14.3 on 2024-03-15",
        "order #4821, ticket JIRA-4412",
        "total $1,249.00 at p99 184ms",
        "build 20240315 took 1234567 ms",
    ] {
        let out = r.redact(&req(&chat(text))).unwrap();
        assert!(out.findings.is_empty(), "{text:?}: {:?}", out.findings);
    }
}

/// Dictionaries match any ASCII case, whole words only, longest term first.
#[test]
fn dictionary_case_and_word_edges() {
    let dir = std::env::temp_dir().join(format!("airlock-dict-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("names.txt"), "Acme\nAcme Corp\n").unwrap();
    std::fs::write(
        dir.join("redaction.yaml"),
        "version: 1\ndictionaries:\n  - { name: customers, type: CUSTOMER, file: names.txt, action: mask }\n",
    )
    .unwrap();
    let r = Redactor::load(&dir.join("redaction.yaml"));
    std::fs::remove_dir_all(&dir).unwrap();
    let r = r.unwrap();
    let masked = |text: &str| {
        let out = r.redact(&req(&chat(text))).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(out.body.as_deref().unwrap_or(&chat(text))).unwrap();
        v["messages"][0]["content"].as_str().unwrap().to_string()
    };
    assert_eq!(masked("ACME CORP signed"), "[REDACTED:CUSTOMER] signed");
    assert_eq!(masked("ask acme today"), "ask [REDACTED:CUSTOMER] today");
    assert_eq!(
        masked("Acme Corporation"),
        "[REDACTED:CUSTOMER] Corporation"
    );
    assert_eq!(masked("acmecorp and Acme2"), "acmecorp and Acme2");
}

#[test]
fn literal_words_compare_like_slices() {
    let names = [
        "jwt",
        "aws_key.access_key_id",
        "github.token",
        "gitlab.token",
        "slack.token",
        "slack.webhook",
        "stripe.key",
        "google_api_key",
        "anthropic_key",
        "openai_key",
        "bearer.token",
    ];
    let mut checked = 0;
    for name in names {
        let (lits, any_case) = rule_literals(name).expect("built-in token rule");
        for &l in lits {
            let lit = Lit::new(l, any_case);
            let mut inputs: Vec<Vec<u8>> = Vec::new();
            for suffix in ["", "x", "0123456789abcdef"] {
                let base = format!("{l}{suffix}").into_bytes();
                inputs.push(base.clone());
                inputs.push(base.to_ascii_uppercase());
                inputs.push(base.to_ascii_lowercase());
                for k in 0..base.len() {
                    let mut m = base.clone();
                    m[k] ^= 0x20;
                    inputs.push(m.clone());
                    m[k] ^= 0x21;
                    inputs.push(m);
                    inputs.push(base[..k].to_vec());
                }
            }
            for x in &inputs {
                let want = match x.get(..l.len()) {
                    Some(h) if any_case => h.eq_ignore_ascii_case(l.as_bytes()),
                    Some(h) => h == l.as_bytes(),
                    None => false,
                };
                assert_eq!(
                    lit.starts(x),
                    want,
                    "{l:?} vs {:?}",
                    String::from_utf8_lossy(x)
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 2000, "{checked}");
}

#[test]
fn literal_matchers_start_with_their_rules_literals() {
    let r = Redactor::builtin();
    let mut checked = 0;
    for (i, rule) in r.rules.iter().enumerate() {
        let Some(starts) = rule.fast.and_then(|f| f.literal_starts()) else {
            continue;
        };
        let name = r.meta[i].name;
        let (lits, any_case) = rule_literals(name).expect("token rule has literals");
        assert!(!any_case, "{name}");
        for s in starts {
            assert!(
                lits.iter().any(|l| s.starts_with(l.as_bytes())),
                "{name}: a match may start with {:?}, which no literal of the rule begins",
                String::from_utf8_lossy(s)
            );
            checked += 1;
        }
    }
    assert!(checked >= 20, "{checked}");
}

/// The built-in token rules' class.
fn token_class(r: &Redactor) -> &ClassRules {
    r.classes
        .iter()
        .find(|c| c.class == Class::Token)
        .expect("token class")
}

/// Strings of at least `len` bytes made of random `pieces` (xorshift from
/// `seed`, so a failure repeats).
fn strings_of(
    pieces: &'static [&'static str],
    len: usize,
    mut seed: u64,
) -> impl FnMut() -> String {
    move || {
        let mut s = String::new();
        while s.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            s.push_str(pieces[(seed % pieces.len() as u64) as usize]);
        }
        s
    }
}

/// Trying a token matcher only at its literals finds what the search over
/// the whole window finds, on generated strings full of near-tokens.
#[test]
fn token_matchers_at_literals_agree_with_window_search() {
    const PIECES: &[&str] = &[
        "ghp_",
        "gho_",
        "github_pat_",
        "AKIA",
        "ASIA",
        "glpat-",
        "gldt-",
        "xoxb-",
        "xoxp-",
        "sk-",
        "sk-ant-",
        "sk-proj-",
        "sk_live_",
        "rk_test_",
        "whsec_",
        "eyJ",
        "eyJhbGciOi",
        ".",
        "-",
        "_",
        " ",
        "\n",
        "A",
        "b",
        "9",
        "abcdefghij",
        "ABCDEFGHIJKLMNOP",
        "0123456789",
        "=",
        "/",
        "+",
        "x",
        "Z",
    ];
    let r = Redactor::builtin();
    let class = token_class(&r);
    let lits = class.lits.as_ref().expect("token literals");
    let mut string = strings_of(PIECES, 120, 0x2545_F491_4F6C_DD1D);
    let (mut compared, mut found) = (0, 0);
    for _ in 0..20_000 {
        let s = string();
        let mut at = Vec::new();
        lits.rules_in(s.as_bytes(), &mut at);
        for (k, &i) in class.rules.iter().enumerate() {
            let Some(f) = r.rules[i].fast.filter(|f| f.literal_starts().is_some()) else {
                continue;
            };
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let mask = vec![0u64; s.len().div_ceil(64)];
            r.run_rule(i, &s, (0, s.len()), &mask, &mut a);
            let starts = at.iter().filter(|x| x.1 == k).map(|x| x.0);
            r.run_at(i, f, &s, (0, s.len()), starts, &mut b);
            let key = |h: &Hit| (h.s, h.e, h.meta);
            assert_eq!(
                a.iter().map(key).collect::<Vec<_>>(),
                b.iter().map(key).collect::<Vec<_>>(),
                "{} in {s:?}",
                r.meta[i].name
            );
            compared += 1;
            found += a.len();
        }
    }
    assert!(compared > 100_000 && found > 1_000, "{compared} {found}");
}

/// The digit pass taken a mask word at a time, with short clusters ruled
/// out on the bytes before them, opens the windows (and shapes) the pass
/// that walks every cluster opens, on strings full of digit groups,
/// separators, capitals, `+` and birth-date labels, across mask words.
#[test]
fn digit_windows_by_words_agree_with_by_runs() {
    const PIECES: &[&str] = &[
        "0",
        "7",
        "12",
        "123",
        "1234",
        "55555",
        "123456",
        "4111",
        "19",
        "1990",
        "2024",
        "0044",
        "1234567",
        "12345678",
        "123456789",
        "4111111111111111",
        " ",
        " ",
        " ",
        "-",
        ".",
        "/",
        "(",
        ")",
        "+",
        "+44 ",
        "(+1) ",
        "  ",
        ") ",
        " (",
        "--",
        ",",
        ":",
        "born ",
        "Born on ",
        "DOB: ",
        "d.o.b. ",
        "birth date: ",
        "naissance ",
        "Geburtsdatum ",
        "the ",
        "and ",
        "because ",
        "x",
        "DE",
        "GB82 ",
        "AB12",
        "Q",
        "é",
        "ms",
        "v",
        "\n",
        "550e8400-e29b-41d4-a716-446655440000",
        "2024-03-15",
        "12/05/1988",
        "(415) 555-2671",
        "123-45-6789",
        "1 ",
        "2) ",
        "3.",
        "4 (",
        "+5",
        "+(",
        "+ ",
        "1 (2 (3 (4 (5 (",
    ];
    // and the edges of what rules a short cluster out, by hand: a `+` at
    // its far end or two bytes before it, capitals 12 bytes before, a
    // label 40 bytes before, a cluster across two mask words, what comes
    // after it
    let edges = [
        "the 1 (2 (3 (4 (5 (7+5 y".to_string(),
        "the 1 (2 (3 (4 (5 (7 (8+5 y".to_string(),
        "call +(0) 12-3456 now".to_string(),
        "AB then x 1234-5678 end".to_string(),
        "born on the 1st, we said, and then 2024-03-15 12".to_string(),
        format!("{}2024-03-15 +1 x", "y".repeat(58)),
        // no other byte in the 24 after a short cluster: the SSN 24 bytes on
        // is still looked at
        format!(
            "{}1234567{} 123-45-6789 y",
            "ab ".repeat(20),
            " .".repeat(8)
        ),
        format!("{}1 . 234567+8 x", "ab ".repeat(20)),
    ];
    let mut string = strings_of(PIECES, 200, 0x9E37_79B9_7F4A_7C15);
    let mut w = trigger::Windows::default();
    let mut seen = 0u16;
    let mut windows = 0usize;
    for k in 0..20_000 {
        let s = edges.get(k).cloned().unwrap_or_else(&mut string);
        trigger::find(&s, 7, false, &mut w);
        let want = trigger::digit_windows_by_runs(&s, &w);
        assert_eq!((w.digits.clone(), w.digit_shapes.clone()), want, "{s:?}");
        windows += w.digits.len();
        seen |= w.digit_shapes.iter().fold(0, |a, &b| a | b);
    }
    // every shape but IPv4's came up, and often
    assert_eq!(seen, (1 << 8) - 1, "{seen:#b}");
    assert!(windows > 40_000, "{windows}");
}

/// The label search around the `b`s finds a birth-date label exactly
/// where a plain search for each label (any case) does.
#[test]
fn dob_label_finds_what_a_plain_search_finds() {
    const PIECES: &[&str] = &[
        "b", "B", "o", "O", "d", "D", ".", "irth", "IRTH", "rn", "ge", "GE", "urt", "n",
        "aissance", "AISSANCE", "nai", "ssance", " ", "x", "do", "d.o.", "bor", "bi",
    ];
    let mut string = strings_of(PIECES, 12, 0xD1B5_4A32_D192_ED03);
    let mut found = 0;
    for _ in 0..50_000 {
        let s = string();
        let b = s.as_bytes();
        let plain = trigger::LABELS
            .iter()
            .any(|l| b.windows(l.len()).any(|w| w.eq_ignore_ascii_case(l)));
        assert_eq!(trigger::dob_label(b), plain, "{s:?}");
        found += usize::from(plain);
    }
    assert!(found > 5_000, "{found}");
}

/// The scan buffers stay with the thread for its next request, except
/// after a body over `SCRATCH_KEEP`, whose buffers would hold that memory.
#[test]
fn scan_buffers_kept_unless_the_body_was_large() {
    let r = Redactor::builtin();
    let kept = |body: &[u8]| {
        let req = ScanRequest {
            body,
            content_type: Some("text/plain"),
            content_encoding: None,
            path: "/v1/completions",
            app: "test-app",
            max_bytes: 4 << 20,
            overrides: None,
        };
        let out = r.redact(&req).unwrap();
        let scratch = SCRATCH.with(Cell::take);
        let norm_len = scratch.as_ref().map(|s| s.win.digit_mask().len());
        SCRATCH.with(|c| c.set(scratch));
        (out.findings.len(), norm_len)
    };
    let small = b"mail alice@example.com about it".repeat(100);
    assert_eq!(kept(&small), (100, Some(small.len().div_ceil(64))));
    let large = vec![b'a'; SCRATCH_KEEP + 1];
    assert_eq!(kept(&large), (0, None));
    // and the next small request starts a new set
    assert_eq!(kept(&small), (100, Some(small.len().div_ceil(64))));
}

#[test]
fn digit_windows_run_the_rules_their_shape_needs() {
    // the per-shape table picks, for every shape, exactly the rules whose
    // needs meet it (with IPv4 on, so that every digit rule is there)
    let cfg = config::FileCfg {
        detectors: vec![config::DetectorCfg {
            id: "ipv4".into(),
            enabled: Some(true),
            action: None,
            min_entropy: None,
        }],
        ..config::FileCfg::default()
    };
    for r in [Redactor::builtin(), Redactor::build(&cfg).unwrap()] {
        let c = r.classes.iter().find(|c| c.class == Class::Digits).unwrap();
        let t = c.by_shape.unwrap();
        for sh in 0..1u16 << 9 {
            let mut want = 0u64;
            let mut bits = sh;
            while bits != 0 {
                want |= t[bits.trailing_zeros() as usize];
                bits &= bits - 1;
            }
            for (k, &i) in c.rules.iter().enumerate() {
                assert_eq!(
                    want >> k & 1 == 1,
                    r.rules[i].need & sh != 0,
                    "shape {sh:#b}, rule {}",
                    r.meta[i].name
                );
            }
        }
    }
}

/// The fewest bytes of class `is` (ASCII) any match of `h` holds; a
/// regex class counts only when it has nothing but such bytes, so this is
/// a lower bound.
fn min_of(h: &regex_syntax::hir::Hir, is: fn(&u8) -> bool) -> usize {
    use regex_syntax::hir::{Class as C, HirKind as K};
    match h.kind() {
        K::Empty | K::Look(_) => 0,
        K::Literal(l) => l.0.iter().filter(|c| is(c)).count(),
        K::Class(C::Bytes(c)) => usize::from(
            c.ranges()
                .iter()
                .all(|r| (r.start()..=r.end()).all(|x| is(&x))),
        ),
        K::Class(C::Unicode(c)) => usize::from(
            c.ranges()
                .iter()
                .all(|r| (r.start()..=r.end()).all(|x| u8::try_from(x).is_ok_and(|x| is(&x)))),
        ),
        K::Repetition(r) => r.min as usize * min_of(&r.sub, is),
        K::Capture(c) => min_of(&c.sub, is),
        K::Concat(v) => v.iter().map(|x| min_of(x, is)).sum(),
        K::Alternation(v) => v.iter().map(|x| min_of(x, is)).min().unwrap_or(0),
    }
}

fn min_digits(h: &regex_syntax::hir::Hir) -> usize {
    min_of(h, u8::is_ascii_digit)
}

fn min_letters(h: &regex_syntax::hir::Hir) -> usize {
    min_of(h, u8::is_ascii_alphabetic)
}

/// Each built-in rule of `class`, with what `count` says of its pattern.
fn fewest_in_class(
    class: Class,
    count: fn(&regex_syntax::hir::Hir) -> usize,
) -> Vec<(&'static str, usize)> {
    detectors::builtins()
        .into_iter()
        .filter(|b| detectors::class_of(b.detector) == class)
        .map(|b| (b.rule, count(&regex_syntax::parse(b.pattern).unwrap())))
        .collect()
}

/// A run of token bytes without a letter opens no token window: every
/// pattern of the token class needs one. The digits of such a run still
/// open their digit window.
#[test]
fn every_token_rule_needs_a_letter() {
    let rules = fewest_in_class(Class::Token, min_letters);
    assert!(rules.len() >= 10, "{rules:?}");
    assert!(rules.iter().all(|r| r.1 >= 1), "{rules:?}");
    let h = regex_syntax::parse(r"(?i:x)?[0-9a-z]{20}|[A-Z]{2}").unwrap();
    assert_eq!(min_letters(&h), 0);
    assert_eq!(
        min_letters(&regex_syntax::parse(r"(?i:bearer)").unwrap()),
        6
    );

    let mut w = trigger::Windows::default();
    trigger::find(
        "card 5555555555554444 or 2024-03-15/2024-04-15 x",
        7,
        false,
        &mut w,
    );
    assert!(w.token.is_empty(), "{:?}", w.token);
    assert_eq!(w.digits.len(), 1, "{:?}", w.digits);
    for t in ["key 5555555555554444AB now", "Bearer 5555555555554444"] {
        trigger::find(t, 7, false, &mut w);
        assert_eq!(w.token.len(), 1, "{t}: {:?}", w.token);
    }
    let r = Redactor::builtin();
    let out = r
        .redact(&req(&chat(
            "pay 5555555555554444 and 4111-1111-1111-1111 now",
        )))
        .unwrap();
    assert_eq!(out.findings.len(), 2, "{:?}", out.findings);
}

/// The digit rules are skipped on a stretch beside an IBAN that holds no
/// digit: every pattern of the digit class needs one.
#[test]
fn every_digit_rule_needs_a_digit() {
    let rules = fewest_in_class(Class::Digits, min_digits);
    assert!(rules.len() >= 8, "{rules:?}");
    assert!(rules.iter().all(|r| r.1 >= 1), "{rules:?}");
    // the bound is not vacuous: a pattern that can go without digits fails it
    let h = regex_syntax::parse(r"[0-9]*-?[a-z]+|[0-9]{3}").unwrap();
    assert_eq!(min_digits(&h), 0);
}

#[test]
fn strings_as_short_as_a_match_are_still_scanned() {
    // Short strings take a byte loop for `@`, `=` and `:`, and a rule or
    // dictionary is skipped only for strings shorter than its shortest
    // match: each of these is a whole string exactly that long, or a key.
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/redaction.yaml");
    let r = Redactor::load(&shipped).unwrap();
    let body = br#"{"a":"EMP-123456","b":"nightjar","c":"a@b.co","d":"pwd=Xy7!kq9Lm2","x@y.io":1}"#;
    let out = r.redact(&req(body)).unwrap();
    let mut rules: Vec<&str> = out.findings.iter().map(|f| &*f.rule).collect();
    rules.sort_unstable();
    assert_eq!(
        rules,
        [
            "codenames",
            "email",
            "email",
            "employee_id",
            "secret_assignment"
        ],
        "{:?}",
        out.findings
    );
    // one byte short of each: nothing
    let body = br#"{"a":"EMP-12345","b":"nightja","c":"a@b.c"}"#;
    assert!(r.redact(&req(body)).unwrap().findings.is_empty());
}

#[test]
fn minimum_match_lengths_of_patterns() {
    assert_eq!(min_match_len(r"(?-u:\b)EMP-[0-9]{6}(?-u:\b)"), 10);
    assert_eq!(min_match_len("a|bcd"), 1);
    assert_eq!(min_match_len("é{2}"), 4);
    // a pattern that does not parse here has no minimum
    assert_eq!(min_match_len("("), 0);
}

/// Overlaps resolve the same way whether a string's hits are ordered by
/// packed keys (up to 4,096 hits) or by the general sort (more).
#[test]
fn overlaps_resolve_alike_with_few_hits_and_many() {
    let r = Redactor::builtin();
    // each piece: an email, an IBAN, a phone with a country code (the
    // national-number rule also matches its last ten digits: two hits,
    // overlapping), then a card
    let piece =
        "x@example.com DE89 4111 1111 1111 1111 11 call +1 415 555 2671 or 5555555555554444 ";
    let one = r.redact(&req(&chat(piece))).unwrap();
    let kinds = |o: &Outcome| {
        o.findings
            .iter()
            .map(|f| f.kind.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&one), ["EMAIL", "IBAN", "PHONE", "CARD"]);
    assert_eq!(
        one.findings[2].end - one.findings[2].start,
        "+1 415 555 2671".len()
    );
    let once = String::from_utf8(one.body.clone().unwrap()).unwrap();
    let redacted_piece: serde_json::Value = serde_json::from_str(&once).unwrap();
    let redacted_piece = redacted_piece["messages"][0]["content"].as_str().unwrap();
    for n in [500, 1400] {
        // fewer than 4,096 hits in one string, and more
        let many = r.redact(&req(&chat(&piece.repeat(n)))).unwrap();
        assert_eq!(many.findings.len(), 4 * n);
        assert_eq!(kinds(&many), vec![kinds(&one); n].concat());
        let out: serde_json::Value = serde_json::from_slice(&many.body.unwrap()).unwrap();
        assert_eq!(
            out["messages"][0]["content"].as_str().unwrap(),
            redacted_piece.repeat(n)
        );
    }
}

/// The token rules find in their trigger windows what they find over the
/// whole string, on generated strings of near-tokens, bearer headers and
/// prose (the windows start at the run, or at the word before it).
#[test]
fn token_windows_find_what_the_whole_string_holds() {
    const PIECES: &[&str] = &[
        "Bearer ",
        "bearer\t",
        "BEARER  ",
        "Authorization: ",
        "Authorization:Bearer ",
        "token ",
        "the ",
        "quarterly report ",
        "ghp_",
        "AKIA",
        "sk-",
        "sk-proj-",
        "xoxb-",
        "eyJ",
        "AIza",
        "https://hooks.slack.com/services/",
        "9f8e7d6c5b4a3928",
        "abcdefghij",
        "ABCDEFGHIJKLMNOP",
        "0123456789",
        ".",
        "-",
        "_",
        "~",
        "=",
        "/",
        " ",
        "\n",
        "\"",
        "(",
    ];
    let r = Redactor::builtin();
    let class = token_class(&r);
    let mut string = strings_of(PIECES, 160, 0x9E37_79B9_7F4A_7C15);
    let mut win = Windows::default();
    let mut found = 0;
    for _ in 0..20_000 {
        let s = string();
        let key = |h: &Hit| (h.s, h.e, h.meta);
        let mut hits = Vec::new();
        r.scan_text(&s, &mut win, &mut hits);
        let mut windowed: Vec<_> = hits
            .iter()
            .filter(|h| class.rules.contains(&h.meta))
            .map(key)
            .collect();
        let mask = vec![0u64; s.len().div_ceil(64)];
        let mut whole = Vec::new();
        for &i in &class.rules {
            r.run_rule(i, &s, (0, s.len()), &mask, &mut whole);
        }
        let mut whole: Vec<_> = whole.iter().map(key).collect();
        windowed.sort_unstable();
        whole.sort_unstable();
        assert_eq!(windowed, whole, "in {s:?}");
        found += whole.len();
    }
    assert!(found > 2_000, "{found}");
}

/// A name is kept once however many times a policy naming it is loaded.
#[test]
fn names_are_interned_once() {
    let a = intern(&String::from("customer_names"));
    let b = intern(&String::from("customer_names"));
    assert!(std::ptr::eq(a, b));
    assert_eq!(a, "customer_names");
    let c = intern("code_names");
    assert!(!std::ptr::eq(a, c));
    assert_eq!(c, "code_names");
}

/// The IBAN length table holds every registered length and nothing else.
#[test]
fn iban_length_table_by_country() {
    for (cc, l) in detectors::IBAN_LENGTHS {
        assert_eq!(detectors::iban_len(cc), Some(usize::from(*l)), "{cc:?}");
    }
    let listed = detectors::IBAN_LENGTHS.len();
    let mut found = 0;
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            found += usize::from(detectors::iban_len(&[a, b]).is_some());
        }
    }
    assert_eq!(found, listed);
    assert_eq!(detectors::iban_len(b"de"), None);
    assert_eq!(detectors::iban_len(b"D"), None);
    assert_eq!(detectors::iban_len(b"D@"), None);
}
