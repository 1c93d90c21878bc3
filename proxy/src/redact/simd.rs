//! Byte-class scans behind the trigger pass, the JSON walker and the
//! normaliser: 32 bytes per step with AVX2 when the CPU has it (detected at
//! run time), else 16 with SSE2 (part of every x86-64 CPU); a portable
//! per-byte fallback elsewhere. Tests run every kernel the CPU can.
//!
//! Prose is mostly bytes no detector cares about; these scans exist so the
//! per-byte logic runs only at the few bytes that matter.

/// Bit `i % 64` of word `i / 64` set for each byte of a string in a class.
#[derive(Debug, Default)]
pub(crate) struct Masks {
    /// ASCII digits.
    pub digit: Vec<u64>,
    /// Characters API keys and tokens are made of (`A-Za-z0-9_-./+=~`).
    pub token: Vec<u64>,
}

/// Whether this CPU has AVX2: the scans then take 32 bytes a step instead
/// of 16 (`std` caches the answer; asking costs a load and a test).
#[inline]
pub(crate) fn wide() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Masks {
    /// Classify every byte of `b`.
    pub fn fill(&mut self, b: &[u8]) {
        self.fill_with(b, wide());
    }

    /// [`Masks::fill`], and an ASCII-lowercased copy of `b` into `lower`
    /// (for the dictionaries) from the same loads.
    pub fn fill_and_lower(&mut self, b: &[u8], lower: &mut Vec<u8>) {
        lower.clear();
        #[cfg(target_arch = "x86_64")]
        if wide() {
            self.reset(b.len());
            lower.reserve(b.len());
            // SAFETY: the CPU has AVX2 (checked above); `lower` has room
            // for `b.len()` bytes.
            let done = unsafe {
                avx2::fill_lower(
                    b,
                    &mut self.digit,
                    &mut self.token,
                    lower.spare_capacity_mut(),
                )
            };
            // SAFETY: `fill_lower` wrote the first `done` bytes.
            unsafe { lower.set_len(done) };
            let rest = b.get(done..).unwrap_or_default();
            lower.extend(rest.iter().map(u8::to_ascii_lowercase));
            if rest.len() >= 64 {
                // not with the room reserved above; the masks the slow way
                self.fill(b);
                return;
            }
            // SAFETY: as above.
            self.last_word(rest, |c| unsafe { avx2::digit_token64(c) });
            return;
        }
        self.fill(b);
        lower.extend(b.iter().map(u8::to_ascii_lowercase));
    }

    /// [`Masks::fill`] with the AVX2 kernel (`wide`, when the CPU has it)
    /// or the SSE2 one.
    pub(crate) fn fill_with(&mut self, b: &[u8], wide: bool) {
        self.reset(b.len());
        let wide = wide && self::wide();
        let classify = |c: &[u8; 64]| {
            #[cfg(target_arch = "x86_64")]
            if wide {
                // SAFETY: the CPU has AVX2 (checked above).
                return unsafe { avx2::digit_token64(c) };
            }
            sse2::digit_token64(c)
        };
        let mut chunks = b.chunks_exact(64);
        if wide {
            // the whole loop in one AVX2 function: its constants stay in
            // registers (a call per 64 bytes reloaded them each time)
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 (checked above).
            unsafe {
                avx2::fill(b, &mut self.digit, &mut self.token)
            };
        } else {
            for ((c, d), t) in (&mut chunks).zip(&mut self.digit).zip(&mut self.token) {
                if let Ok(c) = <&[u8; 64]>::try_from(c) {
                    (*d, *t) = classify(c);
                }
            }
        }
        self.last_word(chunks.remainder(), classify);
    }

    /// Both masks emptied and sized for `len` bytes.
    fn reset(&mut self, len: usize) {
        let words = len.div_ceil(64);
        for m in [&mut self.digit, &mut self.token] {
            m.clear();
            m.resize(words, 0);
        }
    }

    /// The last mask word, from the bytes `rest` (fewer than 64) past the
    /// whole words, classified by `classify`.
    fn last_word(&mut self, rest: &[u8], classify: impl Fn(&[u8; 64]) -> (u64, u64)) {
        if let (false, Some(d), Some(t)) = (
            rest.is_empty(),
            self.digit.last_mut(),
            self.token.last_mut(),
        ) {
            // zero padding belongs to no class
            let mut pad = [0u8; 64];
            let n = rest.len().min(64);
            pad[..n].copy_from_slice(&rest[..n]);
            (*d, *t) = classify(&pad);
        }
    }
}

/// First set bit at or after `pos` in `m`, if any.
#[inline]
pub(crate) fn next_set(m: &[u64], pos: usize) -> Option<usize> {
    let mut k = pos / 64;
    let mut w = m.get(k)? & (!0u64).checked_shl((pos % 64) as u32).unwrap_or(0);
    loop {
        if w != 0 {
            return Some(k * 64 + w.trailing_zeros() as usize);
        }
        k += 1;
        w = *m.get(k)?;
    }
}

/// Clear bits `s..e` of `m` (bits past its end are ignored).
pub(crate) fn clear_range(m: &mut [u64], s: usize, e: usize) {
    let mut p = s;
    while p < e {
        let (k, off) = (p / 64, p % 64);
        let n = (e - p).min(64 - off);
        let bits = if n == 64 {
            !0
        } else {
            ((1u64 << n) - 1) << off
        };
        match m.get_mut(k) {
            Some(w) => *w &= !bits,
            None => return,
        }
        p += n;
    }
}

/// First clear bit at or after `pos` in `m` (the end of a run of set bits).
#[inline]
pub(crate) fn next_clear(m: &[u64], pos: usize) -> usize {
    let mut k = pos / 64;
    let Some(&first) = m.get(k) else {
        return pos;
    };
    let mut w = !first & (!0u64).checked_shl((pos % 64) as u32).unwrap_or(0);
    loop {
        if w != 0 {
            return k * 64 + w.trailing_zeros() as usize;
        }
        k += 1;
        match m.get(k) {
            Some(&x) => w = !x,
            None => return k * 64,
        }
    }
}

/// Number of set bits in `pos..pos + len` (`len` ≤ 64).
#[inline]
pub(crate) fn count(m: &[u64], pos: usize, len: usize) -> u32 {
    let k = pos / 64;
    let lo = u128::from(m.get(k).copied().unwrap_or(0))
        | u128::from(m.get(k + 1).copied().unwrap_or(0)) << 64;
    let w = (lo >> (pos % 64)) as u64;
    let keep = if len >= 64 { !0 } else { (1u64 << len) - 1 };
    (w & keep).count_ones()
}

/// Start and end of the first run of at least `min` set bits among the
/// bits at or after `pos` (a run that began before `pos` counts from
/// `pos`). `min` is 1 to 64.
///
/// Per mask word, one test over it and the next word finds the positions
/// with `min` set bits from there on (ANDing the word with itself shifted,
/// doubling): words whose runs are all shorter — ordinary words of prose,
/// however long — cost a few instructions and no branch each. Inlined, so
/// the caller's constant `min` unrolls the doubling: as a call with `min`
/// unknown, the shifts by a variable amount cost three times as much (the
/// release profile's LTO inlined it anyway; builds without LTO did not).
#[inline(always)]
pub(crate) fn next_run(m: &[u64], pos: usize, min: usize) -> Option<(usize, usize)> {
    let min = min.clamp(1, 64);
    let first = pos / 64;
    let mut k = first;
    while let Some(&w) = m.get(k) {
        let lo = if k == first {
            w & (!0u64).checked_shl((pos % 64) as u32).unwrap_or(0)
        } else {
            w
        };
        let hi = m.get(k + 1).copied().unwrap_or(0);
        let mut x = u128::from(lo) | u128::from(hi) << 64;
        // bit i stays set while bits i..i + span are all set
        let mut span = 1;
        while span * 2 <= min {
            x &= x >> span;
            span *= 2;
        }
        x &= x >> (min - span);
        let at = x as u64;
        if at != 0 {
            let s = k * 64 + at.trailing_zeros() as usize;
            return Some((s, next_clear(m, s)));
        }
        k += 1;
    }
    None
}

/// The special bytes of `b` from `i` (a multiple of 16) on, into `out`.
fn special_from(b: &[u8], out: &mut [u64], mut i: usize) {
    while let Some(a) = b.get(i..i + 16).and_then(|c| <&[u8; 16]>::try_from(c).ok()) {
        // 16 bits at a multiple of 16: within one word
        if let Some(w) = out.get_mut(i / 64) {
            *w |= u64::from(sse2::string_special(a)) << (i % 64);
        }
        i += 16;
    }
    for (k, &c) in b.iter().enumerate().skip(i) {
        if string_special_byte(c) {
            if let Some(w) = out.get_mut(k / 64) {
                *w |= 1 << (k % 64);
            }
        }
    }
}

/// `"`, `\` or a control character.
#[inline]
pub(crate) fn string_special_byte(c: u8) -> bool {
    c == b'"' || c == b'\\' || c < 0x20
}

/// Lead bytes whose every character NFKC leaves as it is and that are not
/// default-ignorable: Latin-1 letters (`C3`), Cyrillic (`D0`–`D4`), CJK
/// ideographs (`E4`–`E9`), Hangul syllables (`EB`–`ED`). Checked against
/// the normaliser over every code point in a test.
#[inline]
pub(crate) fn stable_lead(x: u8) -> bool {
    matches!(x, 0xC3 | 0xD0..=0xD4 | 0xE4..=0xE9 | 0xEB..=0xED)
}

/// Third bytes of `E2 80 xx` (U+2010–U+201F) that NFKC keeps: dashes and
/// typographic quotes, the non-ASCII punctuation most prose has.
#[inline]
pub(crate) fn stable_punct(y: u8) -> bool {
    matches!(y, 0x90 | 0x92..=0x96 | 0x98..=0x9F)
}

/// Whether the normaliser must look at the byte at `k` (a character
/// start): a backslash, or the first byte of a non-ASCII character not
/// known from its bytes to be one NFKC keeps.
#[inline]
pub(crate) fn norm_stop_at(b: &[u8], k: usize) -> bool {
    let x = b[k];
    x == b'\\'
        || (x >= 0xC0
            && !stable_lead(x)
            && !(x == 0xE2
                && b.get(k + 1) == Some(&0x80)
                && b.get(k + 2).copied().is_some_and(stable_punct)))
}

/// The normalisation stops of all of `b` ([`norm_stop_at`] at each
/// position) as a bit mask in `out`, in one pass: the normaliser then jumps
/// from stop to stop in the mask instead of scanning again after each.
pub(crate) fn stop_mask(b: &[u8], out: &mut Vec<u64>) {
    stop_mask_with(b, out, wide());
}

/// [`stop_mask`] with the AVX2 kernel (`wide`) or the SSE2 one.
pub(crate) fn stop_mask_with(b: &[u8], out: &mut Vec<u64>, wide: bool) {
    out.clear();
    out.resize(b.len().div_ceil(64), 0);
    let mut i = 0usize;
    #[cfg(target_arch = "x86_64")]
    if wide && self::wide() {
        // SAFETY: the CPU has AVX2 (checked just above).
        i = unsafe { avx2::stop_mask(b, out) };
    }
    let _ = wide;
    stops_from(b, out, i);
}

/// Two masks of a whole body in one pass: its bytes that are `"`, `\` or
/// a control character (what ends a run of plain JSON string content: the
/// walker jumps from one to the next) into `special`, and its
/// normalisation stops ([`stop_mask`]) into `stops` (each string's are then
/// [copied](copy_bits) out rather than found in a second pass over it).
pub(crate) fn body_masks(b: &[u8], special: &mut Vec<u64>, stops: &mut Vec<u64>) {
    body_masks_with(b, special, stops, wide());
}

/// [`body_masks`] with the AVX2 kernel (`wide`) or the SSE2 ones.
pub(crate) fn body_masks_with(b: &[u8], special: &mut Vec<u64>, stops: &mut Vec<u64>, wide: bool) {
    for m in [&mut *special, &mut *stops] {
        m.clear();
        m.resize(b.len().div_ceil(64), 0);
    }
    let mut i = 0usize;
    #[cfg(target_arch = "x86_64")]
    if wide && self::wide() {
        // SAFETY: the CPU has AVX2 (checked just above).
        i = unsafe { avx2::body_masks(b, special, stops) };
    }
    let _ = wide;
    special_from(b, special, i);
    stops_from(b, stops, i);
}

/// Bits `start..start + len` of `src` as a mask of their own in `out`
/// (bit 0 of `out` is bit `start` of `src`); bits past `src` read as 0.
pub(crate) fn copy_bits(src: &[u64], start: usize, len: usize, out: &mut Vec<u64>) {
    out.clear();
    let (k0, sh) = (start / 64, (start % 64) as u32);
    let words = len.div_ceil(64);
    let s = src.get(k0..).unwrap_or_default();
    if sh == 0 {
        out.extend(s.iter().take(words));
    } else {
        out.extend(
            s.windows(2)
                .take(words)
                .map(|w| w[0] >> sh | w[1] << (64 - sh)),
        );
    }
    // the word whose next is past `src`, then zeros
    while out.len() < words {
        let w = src.get(k0 + out.len()).map_or(0, |w| w >> sh);
        out.push(w);
    }
    if let Some(last) = out.last_mut() {
        if !len.is_multiple_of(64) {
            *last &= (1u64 << (len % 64)) - 1;
        }
    }
}

/// The normalisation stops of `b` from `i` (a multiple of 32) on, into `out`.
fn stops_from(b: &[u8], out: &mut [u64], mut i: usize) {
    while let Some(a) = b.get(i..i + 18).and_then(|c| <&[u8; 18]>::try_from(c).ok()) {
        let m = u64::from(sse2::norm_stop(a));
        // 16 bits at `i`: within one word when `i % 64 <= 48`, which holds
        // as `i` moves in steps of 16 from a multiple of 32
        if let Some(w) = out.get_mut(i / 64) {
            *w |= m << (i % 64);
        }
        i += 16;
    }
    for k in i..b.len() {
        if norm_stop_at(b, k) {
            if let Some(w) = out.get_mut(k / 64) {
                *w |= 1 << (k % 64);
            }
        }
    }
}

/// Two masks of the 32 bytes `a` from the start of a digit cluster: the
/// bytes that are neither digits nor a cluster's separators (` -./()+`),
/// and the `+`s (see `trigger::quiet`).
#[inline]
pub(crate) fn after32(a: &[u8; 32]) -> (u32, u32) {
    sse2::after32(a)
}

/// Three masks of the 48 bytes `a` before a digit cluster: capitals,
/// `b`/`B` and `s`/`S` (see `trigger::quiet`).
#[inline]
pub(crate) fn before48(a: &[u8; 48]) -> [u64; 3] {
    sse2::before48(a)
}

/// Whether `run` is made only of lowercase hex digits, `-` and `.`, with at
/// least one letter: a UUID, git SHA or hash, which no token format is.
pub(crate) fn hexish(run: &[u8]) -> bool {
    let mut letter = false;
    let mut chunks = run.chunks_exact(16);
    for c in &mut chunks {
        if let Ok(a) = <&[u8; 16]>::try_from(c) {
            let (ok, alpha) = sse2::hex(a);
            if ok != 0xFFFF {
                return false;
            }
            letter |= alpha != 0;
        }
    }
    let rest = chunks.remainder();
    if !rest.is_empty() && run.len() >= 16 {
        // the last 16 bytes, overlapping the chunks before (the test is
        // per byte, so bytes seen twice change nothing)
        if let Some(a) = run.last_chunk::<16>() {
            let (ok, alpha) = sse2::hex(a);
            return ok == 0xFFFF && (letter || alpha != 0);
        }
    }
    for &c in rest {
        match c {
            b'a'..=b'f' => letter = true,
            b'0'..=b'9' | b'-' | b'.' => {}
            _ => return false,
        }
    }
    letter
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    //! The helpers carry `#[target_feature(enable = "sse2")]` so the
    //! intrinsics are safe to call inside them; the entry points call them in
    //! an `unsafe` block, sound because SSE2 is part of the x86-64 baseline.
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "sse2")]
    fn load(a: &[u8; 16]) -> __m128i {
        // SAFETY: `a` is 16 readable bytes; the load is unaligned.
        unsafe { _mm_loadu_si128(a.as_ptr().cast()) }
    }

    /// Bytes `x` with `lo <= x <= lo + span` (unsigned), as a byte mask.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn in_range(x: __m128i, lo: u8, span: u8) -> __m128i {
        let d = _mm_sub_epi8(x, _mm_set1_epi8(lo as i8));
        _mm_cmpeq_epi8(_mm_min_epu8(d, _mm_set1_epi8(span as i8)), d)
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn eq(x: __m128i, c: u8) -> __m128i {
        _mm_cmpeq_epi8(x, _mm_set1_epi8(c as i8))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn bits(m: __m128i) -> u32 {
        _mm_movemask_epi8(m) as u32
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn string_special_sse2(a: &[u8; 16]) -> u32 {
        let x = load(a);
        bits(_mm_or_si128(
            _mm_or_si128(eq(x, b'"'), eq(x, b'\\')),
            in_range(x, 0, 0x1f),
        ))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn norm_stop_sse2(a: &[u8; 18]) -> u32 {
        // SAFETY: `a` has 18 readable bytes; each load reads 16 from 0, 1, 2.
        let (x, x1, x2) = unsafe {
            (
                _mm_loadu_si128(a.as_ptr().cast()),
                _mm_loadu_si128(a.as_ptr().add(1).cast()),
                _mm_loadu_si128(a.as_ptr().add(2).cast()),
            )
        };
        let lead = in_range(x, 0xC0, 0x3F);
        let stable = _mm_or_si128(
            _mm_or_si128(eq(x, 0xC3), in_range(x, 0xD0, 4)),
            _mm_or_si128(in_range(x, 0xE4, 5), in_range(x, 0xEB, 2)),
        );
        let punct3 = _mm_andnot_si128(
            _mm_or_si128(eq(x2, 0x91), eq(x2, 0x97)),
            in_range(x2, 0x90, 15),
        );
        let punct = _mm_and_si128(_mm_and_si128(eq(x, 0xE2), eq(x1, 0x80)), punct3);
        let stop = _mm_andnot_si128(_mm_or_si128(stable, punct), lead);
        bits(_mm_or_si128(eq(x, b'\\'), stop))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn digit_token_sse2(x: __m128i) -> (u32, u32) {
        let digit = in_range(x, b'0', 9);
        let letter = in_range(_mm_or_si128(x, _mm_set1_epi8(0x20)), b'a', 25);
        let punct = _mm_or_si128(
            _mm_or_si128(in_range(x, b'-', 2), eq(x, b'_')),
            _mm_or_si128(_mm_or_si128(eq(x, b'+'), eq(x, b'=')), eq(x, b'~')),
        );
        let token = _mm_or_si128(_mm_or_si128(digit, letter), punct);
        (bits(digit), bits(token))
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn hex_sse2(a: &[u8; 16]) -> (u32, u32) {
        let x = load(a);
        let alpha = in_range(x, b'a', 5);
        let ok = _mm_or_si128(
            _mm_or_si128(alpha, in_range(x, b'0', 9)),
            _mm_or_si128(eq(x, b'-'), eq(x, b'.')),
        );
        (bits(ok), bits(alpha))
    }

    #[inline]
    pub(super) fn hex(a: &[u8; 16]) -> (u32, u32) {
        // SAFETY: SSE2 is in every x86-64 CPU (the target's baseline).
        unsafe { hex_sse2(a) }
    }

    #[inline]
    pub(super) fn string_special(a: &[u8; 16]) -> u32 {
        // SAFETY: SSE2 is in every x86-64 CPU (the target's baseline).
        unsafe { string_special_sse2(a) }
    }

    #[inline]
    pub(super) fn norm_stop(a: &[u8; 18]) -> u32 {
        // SAFETY: as above.
        unsafe { norm_stop_sse2(a) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn digit_token64_sse2(a: &[u8; 64]) -> (u64, u64) {
        let mut d = 0u64;
        let mut t = 0u64;
        for q in 0..4 {
            // SAFETY: `a` has 64 readable bytes; 16 * q + 16 <= 64.
            let x = unsafe { _mm_loadu_si128(a.as_ptr().add(16 * q).cast()) };
            let (dm, tm) = digit_token_sse2(x);
            d |= u64::from(dm) << (16 * q);
            t |= u64::from(tm) << (16 * q);
        }
        (d, t)
    }

    #[inline]
    pub(super) fn digit_token64(a: &[u8; 64]) -> (u64, u64) {
        // SAFETY: as above.
        unsafe { digit_token64_sse2(a) }
    }

    /// Digits and a cluster's separators (` -./()+`): 2D–39, 28–29, 2B, 20.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn cluster_byte(x: __m128i) -> __m128i {
        _mm_or_si128(
            _mm_or_si128(in_range(x, 0x2D, 12), in_range(x, 0x28, 1)),
            _mm_or_si128(eq(x, b'+'), eq(x, b' ')),
        )
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn after32_sse2(a: &[u8; 32]) -> (u32, u32) {
        // SAFETY: `a` has 32 readable bytes.
        let (x, y) = unsafe {
            (
                _mm_loadu_si128(a.as_ptr().cast()),
                _mm_loadu_si128(a.as_ptr().add(16).cast()),
            )
        };
        let other = !(bits(cluster_byte(x)) | bits(cluster_byte(y)) << 16);
        let plus = bits(eq(x, b'+')) | bits(eq(y, b'+')) << 16;
        (other, plus)
    }

    #[inline]
    pub(super) fn after32(a: &[u8; 32]) -> (u32, u32) {
        // SAFETY: as above.
        unsafe { after32_sse2(a) }
    }

    #[inline]
    #[target_feature(enable = "sse2")]
    fn before48_sse2(a: &[u8; 48]) -> [u64; 3] {
        let mut m = [0u64; 3];
        for q in 0..3 {
            // SAFETY: `a` has 48 readable bytes; 16 * q + 16 <= 48.
            let x = unsafe { _mm_loadu_si128(a.as_ptr().add(16 * q).cast()) };
            let low = _mm_or_si128(x, _mm_set1_epi8(0x20));
            let at = 16 * q;
            m[0] |= u64::from(bits(in_range(x, b'A', 25))) << at;
            m[1] |= u64::from(bits(eq(low, b'b'))) << at;
            m[2] |= u64::from(bits(eq(low, b's'))) << at;
        }
        m
    }

    #[inline]
    pub(super) fn before48(a: &[u8; 48]) -> [u64; 3] {
        // SAFETY: as above.
        unsafe { before48_sse2(a) }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The SSE2 kernels at 32 bytes a step. The entry points are `unsafe`:
    //! the caller must have checked that the CPU has AVX2.
    use std::arch::x86_64::*;

    /// The 32 bytes of `a` from `at`.
    ///
    /// # Safety
    /// `a` must have 32 bytes from `at` (and the CPU AVX2).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn load(a: &[u8], at: usize) -> __m256i {
        debug_assert!(a.len() >= at + 32);
        // SAFETY: the caller guarantees 32 readable bytes from `at`.
        unsafe { _mm256_loadu_si256(a.as_ptr().add(at).cast()) }
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn in_range(x: __m256i, lo: u8, span: u8) -> __m256i {
        let d = _mm256_sub_epi8(x, _mm256_set1_epi8(lo as i8));
        _mm256_cmpeq_epi8(_mm256_min_epu8(d, _mm256_set1_epi8(span as i8)), d)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn eq(x: __m256i, c: u8) -> __m256i {
        _mm256_cmpeq_epi8(x, _mm256_set1_epi8(c as i8))
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn bits(m: __m256i) -> u32 {
        _mm256_movemask_epi8(m) as u32
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn or(a: __m256i, b: __m256i) -> __m256i {
        _mm256_or_si256(a, b)
    }

    /// The special bytes (`"`, `\`, control) and the normalisation stops
    /// of `b` in one pass, sharing the loads;
    /// returns where the steps stopped (a multiple of 32).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn body_masks(b: &[u8], special: &mut [u64], stop: &mut [u64]) -> usize {
        let both = |i: usize| {
            // SAFETY: called only with 34 bytes from `i` in `b`.
            let (x, x1, x2) = unsafe { (load(b, i), load(b, i + 1), load(b, i + 2)) };
            let sp = bits(or(or(eq(x, b'"'), eq(x, b'\\')), in_range(x, 0, 0x1f)));
            (u64::from(sp), u64::from(stops(x, x1, x2)))
        };
        // whole words, 64 bytes a step: each word written once, zipped with
        // the masks so no store is bounds-checked
        let whole = b.len().saturating_sub(2) / 64;
        for ((k, a), c) in (0..whole).zip(special.iter_mut()).zip(stop.iter_mut()) {
            // SAFETY: 66 bytes from 64 * k are in `b` (k < whole).
            let ((sl, tl), (sh, th)) = (both(64 * k), both(64 * k + 32));
            *a = sl | sh << 32;
            *c = tl | th << 32;
        }
        let mut i = 64 * whole.min(special.len()).min(stop.len());
        while i + 34 <= b.len() {
            // SAFETY: 34 bytes from `i` are in `b`: 32 from each of i, i+1, i+2.
            let (x, x1, x2) = unsafe { (load(b, i), load(b, i + 1), load(b, i + 2)) };
            let sp = bits(or(or(eq(x, b'"'), eq(x, b'\\')), in_range(x, 0, 0x1f)));
            let st = stops(x, x1, x2);
            if let (Some(a), Some(c)) = (special.get_mut(i / 64), stop.get_mut(i / 64)) {
                *a |= u64::from(sp) << (i % 64);
                *c |= u64::from(st) << (i % 64);
            }
            i += 32;
        }
        i
    }

    /// The normalisation stops of `b` into `out` (one bit per byte),
    /// 32 positions a step while the two bytes after them are in `b`;
    /// returns where the steps stopped (a multiple of 32).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn stop_mask(b: &[u8], out: &mut [u64]) -> usize {
        let mut i = 0usize;
        while i + 34 <= b.len() {
            // SAFETY: 34 bytes from `i` are in `b`: 32 from each of i, i+1, i+2.
            let (x, x1, x2) = unsafe { (load(b, i), load(b, i + 1), load(b, i + 2)) };
            let m = u64::from(stops(x, x1, x2));
            if let Some(w) = out.get_mut(i / 64) {
                *w |= m << (i % 64);
            }
            i += 32;
        }
        i
    }

    /// Stops among 32 positions `x`, given the bytes one and two further.
    ///
    /// Each byte is classed by two table lookups, on its high and its low
    /// nibble, ANDed: bit 3 marks the backslash, bit 4 a lead byte (`C0`–`FF`),
    /// bits 0–2 the stable leads of rows `C`, `D` and `E` ([`stable_lead`]),
    /// bit 5 `E2` (the row of the stable punctuation).
    #[inline]
    #[target_feature(enable = "avx2")]
    fn stops(x: __m256i, x1: __m256i, x2: __m256i) -> u32 {
        #[rustfmt::skip]
        const HI: [i8; 16] = [
            0, 0, 0, 0, 0, 0x08, 0, 0,
            0, 0, 0, 0, 0x11, 0x12, 0x34, 0x10,
        ];
        #[rustfmt::skip]
        const LO: [i8; 16] = [
            0x12, 0x12, 0x32, 0x13, 0x16, 0x14, 0x14, 0x14,
            0x14, 0x14, 0x10, 0x14, 0x1C, 0x14, 0x10, 0x10,
        ];
        let table = |t: [i8; 16]| {
            let [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p] = t;
            _mm256_setr_epi8(
                a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, a, b, c, d, e, f, g, h, i, j, k, l,
                m, n, o, p,
            )
        };
        let nib = _mm256_set1_epi8(0x0F);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(x), nib);
        let lo = _mm256_and_si256(x, nib);
        let c = _mm256_and_si256(
            _mm256_shuffle_epi8(table(HI), hi),
            _mm256_shuffle_epi8(table(LO), lo),
        );
        let has = |bits: u8, want: u8| eq(_mm256_and_si256(c, _mm256_set1_epi8(bits as i8)), want);
        let backslash = has(0x08, 0x08);
        // a lead byte with none of the stable bits
        let unstable = has(0x17, 0x10);
        let punct3 = _mm256_andnot_si256(or(eq(x2, 0x91), eq(x2, 0x97)), in_range(x2, 0x90, 15));
        let punct = _mm256_and_si256(_mm256_and_si256(has(0x20, 0x20), eq(x1, 0x80)), punct3);
        bits(or(backslash, _mm256_andnot_si256(punct, unstable)))
    }

    /// Digit and token-character masks of 64 bytes (see `sse2::digit_token64`).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn digit_token64(a: &[u8; 64]) -> (u64, u64) {
        // SAFETY: `a` is 64 bytes.
        let (lo, hi) = unsafe { (load(a, 0), load(a, 32)) };
        let (dl, tl) = digit_token(lo);
        let (dh, th) = digit_token(hi);
        (
            u64::from(dl) | u64::from(dh) << 32,
            u64::from(tl) | u64::from(th) << 32,
        )
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn digit_token(x: __m256i) -> (u32, u32) {
        let digit = in_range(x, b'0', 9);
        let letter = in_range(_mm256_or_si256(x, _mm256_set1_epi8(0x20)), b'a', 25);
        let punct = or(
            or(in_range(x, b'-', 2), eq(x, b'_')),
            or(or(eq(x, b'+'), eq(x, b'=')), eq(x, b'~')),
        );
        (bits(digit), bits(or(or(digit, letter), punct)))
    }

    /// [`fill`], and the ASCII-lowercased bytes of every whole 64 bytes of
    /// `b` into `lower`; returns how many bytes it wrote there.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill_lower(
        b: &[u8],
        digit: &mut [u64],
        token: &mut [u64],
        lower: &mut [std::mem::MaybeUninit<u8>],
    ) -> usize {
        let n = (b.len() / 64)
            .min(digit.len())
            .min(token.len())
            .min(lower.len() / 64);
        let case = _mm256_set1_epi8(0x20);
        for k in 0..n {
            // SAFETY: 64 bytes from 64 * k are in `b`.
            let (lo, hi) = unsafe { (load(b, 64 * k), load(b, 64 * k + 32)) };
            let (dl, tl) = digit_token(lo);
            let (dh, th) = digit_token(hi);
            digit[k] = u64::from(dl) | u64::from(dh) << 32;
            token[k] = u64::from(tl) | u64::from(th) << 32;
            let fold = |x| _mm256_or_si256(x, _mm256_and_si256(in_range(x, b'A', 25), case));
            // SAFETY: `lower` has room for 64 bytes from 64 * k (k < n).
            unsafe {
                let at = lower.as_mut_ptr().add(64 * k).cast::<__m256i>();
                _mm256_storeu_si256(at, fold(lo));
                _mm256_storeu_si256(at.add(1), fold(hi));
            }
        }
        64 * n
    }

    /// The digit and token masks of every whole 64 bytes of `b` (the last
    /// partial word is left to the caller).
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn fill(b: &[u8], digit: &mut [u64], token: &mut [u64]) {
        for ((k, d), t) in (0..b.len() / 64)
            .zip(digit.iter_mut())
            .zip(token.iter_mut())
        {
            // SAFETY: 64 bytes from 64 * k are in `b`.
            let (lo, hi) = unsafe { (load(b, 64 * k), load(b, 64 * k + 32)) };
            let (dl, tl) = digit_token(lo);
            let (dh, th) = digit_token(hi);
            *d = u64::from(dl) | u64::from(dh) << 32;
            *t = u64::from(tl) | u64::from(th) << 32;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod sse2 {
    //! Portable stand-ins with the same results, one byte at a time.

    fn mask(a: &[u8; 16], f: impl Fn(u8) -> bool) -> u32 {
        a.iter()
            .enumerate()
            .fold(0, |m, (i, &c)| m | (u32::from(f(c)) << i))
    }

    pub(super) fn string_special(a: &[u8; 16]) -> u32 {
        mask(a, |c| c == b'"' || c == b'\\' || c < 0x20)
    }

    pub(super) fn norm_stop(a: &[u8; 18]) -> u32 {
        (0..16).fold(0, |m, i| m | (u32::from(super::norm_stop_at(a, i)) << i))
    }

    pub(super) fn hex(a: &[u8; 16]) -> (u32, u32) {
        (
            mask(a, |c| {
                c.is_ascii_digit() || matches!(c, b'a'..=b'f' | b'-' | b'.')
            }),
            mask(a, |c| matches!(c, b'a'..=b'f')),
        )
    }

    pub(super) fn digit_token64(a: &[u8; 64]) -> (u64, u64) {
        let mut d = 0u64;
        let mut t = 0u64;
        for (i, &c) in a.iter().enumerate() {
            d |= u64::from(c.is_ascii_digit()) << i;
            let tok = c.is_ascii_alphanumeric()
                || matches!(c, b'_' | b'-' | b'.' | b'/' | b'+' | b'=' | b'~');
            t |= u64::from(tok) << i;
        }
        (d, t)
    }

    pub(super) fn after32(a: &[u8; 32]) -> (u32, u32) {
        let (mut other, mut plus) = (0u32, 0u32);
        for (i, &c) in a.iter().enumerate() {
            let cluster = c.is_ascii_digit() || b" -./()+".contains(&c);
            other |= u32::from(!cluster) << i;
            plus |= u32::from(c == b'+') << i;
        }
        (other, plus)
    }

    pub(super) fn before48(a: &[u8; 48]) -> [u64; 3] {
        let mut m = [0u64; 3];
        for (i, &c) in a.iter().enumerate() {
            m[0] |= u64::from(c.is_ascii_uppercase()) << i;
            m[1] |= u64::from(c.eq_ignore_ascii_case(&b'b')) << i;
            m[2] |= u64::from(c.eq_ignore_ascii_case(&b's')) << i;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(c: u8) -> bool {
        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b'/' | b'+' | b'=' | b'~')
    }

    #[test]
    fn cluster_context_masks_agree_with_per_byte_classes() {
        // every byte value at every position of the 32 and 48 bytes
        for c in 0..=255u8 {
            for at in 0..48 {
                let mut a = [b'x'; 48];
                a[at] = c;
                let [upper, bb, ss] = before48(&a);
                let bit = |m: u64| m >> at & 1 == 1;
                assert_eq!(bit(upper), c.is_ascii_uppercase(), "{c} at {at}");
                assert_eq!(bit(bb), c == b'b' || c == b'B', "{c} at {at}");
                assert_eq!(bit(ss), c == b's' || c == b'S', "{c} at {at}");
                if let Some(a) = a.first_chunk::<32>().filter(|_| at < 32) {
                    let (other, plus) = after32(a);
                    let cluster = c.is_ascii_digit() || b" -./()+".contains(&c);
                    assert_eq!(other >> at & 1 == 0, cluster, "{c} at {at}");
                    assert_eq!(plus >> at & 1 == 1, c == b'+', "{c} at {at}");
                }
            }
        }
    }

    #[test]
    fn masks_agree_with_per_byte_classes() {
        let b: Vec<u8> = (0..=255u8)
            .chain(b"abc 123 x-y_z".iter().copied())
            .collect();
        // both kernels, at every offset of the 64-byte steps
        for wide in kernels() {
            for shift in 0..64 {
                let b = &b[shift..];
                let mut m = Masks::default();
                m.fill_with(b, wide);
                for (i, &c) in b.iter().enumerate() {
                    assert_eq!(
                        m.digit[i / 64] >> (i % 64) & 1 == 1,
                        c.is_ascii_digit(),
                        "{c} wide {wide}"
                    );
                    assert_eq!(m.token[i / 64] >> (i % 64) & 1 == 1, token(c), "{c}");
                }
            }
            for shift in 0..64 {
                let b = &b[shift..];
                let (mut m, mut stops) = (Vec::new(), Vec::new());
                body_masks_with(b, &mut m, &mut stops, wide);
                assert_eq!(m.len(), b.len().div_ceil(64));
                for (k, &c) in b.iter().enumerate() {
                    let want = c == b'"' || c == b'\\' || c < 0x20;
                    assert_eq!(m[k / 64] >> (k % 64) & 1 == 1, want, "wide {wide} at {k}");
                }
            }
        }
    }

    /// The kernels this CPU can run: SSE2 (`false`) always, AVX2 when it
    /// has it (the one the scans then use).
    fn kernels() -> Vec<bool> {
        if wide() {
            vec![false, true]
        } else {
            vec![false]
        }
    }

    #[test]
    fn norm_stops_agree_with_per_byte_check() {
        // every lead byte, and `E2 80 xx` for every xx, in every lane of both kernels
        let mut b: Vec<u8> = Vec::new();
        for x in 0x80..=0xFFu8 {
            b.extend_from_slice(&[b'a', 0xE2, 0x80, x, x, 0x80, b'\\', b' ']);
        }
        for wide in kernels() {
            for shift in 0..70 {
                let s = &b[shift..];
                let mut m = Vec::new();
                stop_mask_with(s, &mut m, wide);
                assert_eq!(m.len(), s.len().div_ceil(64));
                for k in 0..s.len() {
                    assert_eq!(
                        m[k / 64] >> (k % 64) & 1 == 1,
                        norm_stop_at(s, k),
                        "wide {wide} shift {shift} at {k}"
                    );
                }
            }
        }
        let first = |t: &str| {
            let mut m = Vec::new();
            stop_mask(t.as_bytes(), &mut m);
            next_set(&m, 0).unwrap_or(t.len())
        };
        let t = "café “naïve” résumé — it’s Привет 中文 서울";
        assert_eq!(first(t), t.len());
        let u = "ﬁle 4１１1 a\\n";
        assert_eq!(first(u), 0);
        assert_eq!(first(&u[3..]), u[3..].find('１').unwrap());
    }

    #[test]
    fn masks_with_the_lowercase_copy_are_the_masks_and_the_copy() {
        // every length around the 64-byte steps and every byte value (the
        // AVX2 kernel where the CPU has it)
        let bytes: Vec<u8> = (0..=255u8).cycle().skip(7).step_by(13).take(400).collect();
        for len in (0..200).chain([255, 256, 257, 399]) {
            let b = &bytes[..len];
            let (mut a, mut m) = (Masks::default(), Masks::default());
            let mut lower = vec![b'x'; 3];
            a.fill_and_lower(b, &mut lower);
            m.fill(b);
            assert_eq!(a.digit, m.digit, "len {len}");
            assert_eq!(a.token, m.token, "len {len}");
            assert_eq!(lower, b.to_ascii_lowercase(), "len {len}");
        }
    }

    #[test]
    fn body_masks_agree_with_their_own_passes() {
        // every byte value, quotes, escapes and `E2 80 xx`, in every lane
        let mut b: Vec<u8> = (0..=255u8).collect();
        for x in 0x80..=0xFFu8 {
            b.extend_from_slice(&[b'"', 0xE2, 0x80, x, b'\\', 0x1F, b'a']);
        }
        for wide in kernels() {
            for shift in 0..70 {
                let s = &b[shift..];
                let (mut sp, mut st) = (Vec::new(), Vec::new());
                body_masks_with(s, &mut sp, &mut st, wide);
                let mut st1 = Vec::new();
                stop_mask_with(s, &mut st1, false);
                assert_eq!(st, st1, "stops, wide {wide} shift {shift}");
                for (k, &c) in s.iter().enumerate() {
                    let want = string_special_byte(c);
                    assert_eq!(sp[k / 64] >> (k % 64) & 1 == 1, want, "wide {wide} at {k}");
                }
            }
        }
    }

    #[test]
    fn copy_bits_takes_exactly_its_bits() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let src: Vec<u64> = (0..5)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            })
            .collect();
        let bit = |m: &[u64], p: usize| m.get(p / 64).is_some_and(|w| w >> (p % 64) & 1 == 1);
        let mut out = Vec::new();
        for start in 0..200 {
            for len in [0, 1, 5, 63, 64, 65, 127, 128, 200] {
                copy_bits(&src, start, len, &mut out);
                assert_eq!(out.len(), len.div_ceil(64));
                for p in 0..out.len() * 64 {
                    let want = p < len && bit(&src, start + p);
                    assert_eq!(bit(&out, p), want, "{start}+{len} at {p}");
                }
            }
        }
    }

    #[test]
    fn clear_range_clears_exactly_its_bits() {
        for s in 0..200 {
            for len in [0, 1, 2, 5, 63, 64, 65, 130, 300] {
                let mut m = vec![!0u64; 3];
                clear_range(&mut m, s, s + len);
                for p in 0..192 {
                    let set = m[p / 64] >> (p % 64) & 1 == 1;
                    assert_eq!(set, !(s..s + len).contains(&p), "{s}+{len} at {p}");
                }
            }
        }
    }

    #[test]
    fn hexish_agrees_with_per_byte_check() {
        let slow = |r: &[u8]| {
            r.iter()
                .all(|c| matches!(c, b'a'..=b'f' | b'0'..=b'9' | b'-' | b'.'))
                && r.iter().any(|c| matches!(c, b'a'..=b'f'))
        };
        // one odd byte (or the only letter) at every place of runs of every
        // length up to 50
        for len in 1..50 {
            for at in 0..len {
                for odd in [b'g', b'A', b'a', b' '] {
                    let mut r = vec![b'7'; len];
                    r[at] = odd;
                    assert_eq!(hexish(&r), slow(&r), "{:?}", String::from_utf8_lossy(&r));
                    r[(at + len / 2) % len] = b'c';
                    assert_eq!(hexish(&r), slow(&r), "{:?}", String::from_utf8_lossy(&r));
                }
            }
        }
    }

    #[test]
    fn hexish_runs() {
        assert!(hexish(b"550e8400-e29b-41d4-a716-446655440000"));
        assert!(hexish(b"9fceb02d0ae598e95dc970b74767f19372d61af8"));
        assert!(!hexish(b"12345678901234567890"));
        assert!(!hexish(b"550e8400-e29b-41d4-a716-44665544000G"));
        assert!(!hexish(b"AKIAIOSFODNN7EXAMPLE"));
    }

    #[test]
    fn next_run_finds_what_a_bit_walk_finds() {
        // masks made of runs of random lengths, some across word ends
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut found = 0;
        for _ in 0..300 {
            let mut bits = Vec::new();
            while bits.len() < 300 {
                let len = [1, 3, 7, 8, 9, 15, 16, 17, 30, 70][rnd(10) as usize];
                let on = rnd(2) == 1;
                bits.extend(std::iter::repeat_n(on, len));
            }
            let mut m = vec![0u64; bits.len().div_ceil(64)];
            for (i, _) in bits.iter().enumerate().filter(|(_, &b)| b) {
                m[i / 64] |= 1 << (i % 64);
            }
            let bit = |i: usize| bits.get(i).copied().unwrap_or(false);
            for _ in 0..20 {
                let pos = rnd(bits.len() as u64) as usize;
                for min in [1, 8, 15, 16, 17, 23, 64] {
                    // the naive answer: walk the bits from `pos`
                    let mut want = None;
                    let mut i = pos;
                    while i < bits.len() {
                        if bit(i) {
                            let s = i;
                            while bit(i) {
                                i += 1;
                            }
                            if i - s >= min {
                                want = Some((s, i));
                                break;
                            }
                        } else {
                            i += 1;
                        }
                    }
                    assert_eq!(next_run(&m, pos, min), want, "pos {pos} min {min}");
                    found += usize::from(want.is_some());
                }
            }
        }
        assert!(found > 10_000, "{found}");
    }

    #[test]
    fn runs_and_bits() {
        let s = b"short words then AKIAIOSFODNN7EXAMPLEXX and more";
        let mut m = Masks::default();
        m.fill(s);
        let (at, end) = next_run(&m.token, 0, 16).unwrap();
        assert_eq!(&s[at..at + 4], b"AKIA");
        assert_eq!(end, at + 22);
        assert_eq!(next_clear(&m.token, at), at + 22);
        assert_eq!(next_run(&m.token, at + 7, 16), None);
        assert_eq!(next_run(&m.token, 0, 23), None);
        assert_eq!(next_set(&m.digit, 0), Some(at + 12));
        assert_eq!(count(&m.digit, at, 20), 1);
        // a run that crosses a 64-byte word
        let mut long = vec![b' '; 60];
        long.extend_from_slice(b"ghp_0123456789abcdefghij");
        m.fill(&long);
        assert_eq!(next_run(&m.token, 0, 16), Some((60, long.len())));
        assert_eq!(next_clear(&m.token, 60), long.len());
        // runs on both sides of a word boundary, each shorter than the minimum
        let mut two = vec![b'a'; 70];
        two[56] = b' ';
        two[69] = b' ';
        m.fill(&two);
        assert_eq!(next_run(&m.token, 0, 16), Some((0, 56)));
        assert_eq!(next_run(&m.token, 57, 16), None);
    }
}
