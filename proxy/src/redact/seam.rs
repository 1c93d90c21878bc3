//! Reading a message's text parts together: the model sees a message's
//! content parts (and `system` or `tool_result` blocks) as one text, so
//! after each text part is scanned alone, the seam to the part before it is
//! scanned again with the tail of the run, and a match across it is one
//! finding whose pieces are all replaced. Runs as part of the `redact`
//! stage, per string, from the JSON walker's visitor.

use std::sync::Arc;

use super::json::{self, Seg};
use super::normalize::Norm;
use super::{Hit, Scan};

/// The run of consecutive text parts of one array (a message's content
/// parts) the current part continues: the tail of their text that a match
/// across the seam to the next part can start in.
#[derive(Default)]
pub(super) struct Seam {
    /// The array's path.
    array: Vec<Seg>,
    /// The element index a part must have to continue the run.
    next: Option<usize>,
    /// The tail, oldest first.
    pieces: Vec<Piece>,
    /// Buffers of pieces dropped from the tail, for the next ones: a part
    /// whose normalisation went into the tail hands the next string an
    /// empty buffer, and growing one for every part cost a run of parts
    /// more than its seam scans.
    spare: Vec<Piece>,
    /// The joined text and its hits (reused buffers).
    virt: String,
    hits: Vec<Hit>,
}

/// A suffix of one part's scanned text and the way back to body offsets.
struct Piece {
    text: String,
    /// Where `text` starts in the part's scanned text.
    off: usize,
    map: PieceMap,
    /// The part's path (rendered only for a finding that starts in it).
    path: Vec<Seg>,
}

/// How a part's scanned text maps to body offsets.
enum PieceMap {
    /// The text is the raw string, which starts at this body offset.
    Raw(usize),
    /// The text was normalised.
    Norm(Norm),
}

impl PieceMap {
    fn raw(&self, s: usize, e: usize) -> (usize, usize) {
        match self {
            PieceMap::Raw(b) => (b + s, b + e),
            PieceMap::Norm(n) => n.raw_span_from(s, e, &mut 0),
        }
    }
}

/// How much of a run's text is kept for the next seam: more than the
/// longest token a seam can hide.
const SEAM_TAIL: usize = 512;

/// How much of a part is scanned behind the tail before a match across
/// the seam is known to be there (longer than any built-in pattern with a
/// bound; the unbounded ones match up to the end of what is scanned).
const SEAM_HEAD: usize = 512;

/// The most kept when a match runs to a part's end (a private key block
/// split between parts): more than any key block, and a bound on what
/// each further part scans again.
const SEAM_MAX: usize = 16 * 1024;

/// Whether two paths are the same place in the body (keys by position).
fn same_path(a: &[Seg], b: &[Seg]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Seg::Key { start: p, .. }, Seg::Key { start: q, .. }) => p == q,
            (Seg::Index(p), Seg::Index(q)) => p == q,
            _ => false,
        })
}

/// Whether the string at `path` is the `text` of an element of an array
/// (a content part of a message, a system or tool-result block): the
/// array's path and the element's index.
pub(super) fn text_part<'p>(body: &[u8], path: &'p [Seg]) -> Option<(&'p [Seg], usize)> {
    let [array @ .., Seg::Index(k), Seg::Key {
        start,
        end,
        escaped,
        ..
    }] = path
    else {
        return None;
    };
    let key = body.get(*start..*end)?;
    // an escaped key (`te\u0078t`) is the same key to the gateway
    let is_text = if *escaped {
        json::decode_string(key) == "text"
    } else {
        key == b"text"
    };
    is_text.then_some((array, *k))
}

impl Scan<'_, '_> {
    /// Scan across the seam between this text part (`k`-th of `array`) and
    /// the parts before it in the same run: the model reads a message's
    /// text parts as one text, so a secret split between parts is one
    /// secret. Then keep this part's tail for the next seam. `own` are the
    /// part's own hits; returns the normalisation buffer when it was not
    /// kept for the tail.
    pub(super) fn seam(
        &mut self,
        array: &[Seg],
        k: usize,
        (start, raw_text, fast): (usize, &str, bool),
        norm: Norm,
        own: &[Hit],
        path: &[Seg],
    ) -> Norm {
        if self.seam.next != Some(k) || !same_path(&self.seam.array, array) {
            let dropped = std::mem::take(&mut self.seam.pieces);
            self.seam.spare.extend(dropped);
            self.seam.array.clear();
            self.seam.array.extend_from_slice(array);
        }
        self.seam.next = Some(k + 1);
        let pieces = std::mem::take(&mut self.seam.pieces);
        let text = if fast { raw_text } else { norm.text.as_str() };
        let boundary: usize = pieces.iter().map(|p| p.text.len()).sum();
        let total = boundary + text.len();
        // this part's body span of its text `s..e`
        let raw = |s: usize, e: usize| {
            if fast {
                (start + s, start + e)
            } else {
                norm.raw_span_from(s, e, &mut 0)
            }
        };
        // Where the tail kept for the next seam starts: the last stretch,
        // or further back where a match runs to the end of the text (a key
        // block goes on in the next part), but never so far back that
        // each part would scan the whole run again.
        let mut cut = total.saturating_sub(SEAM_TAIL);
        for h in own.iter().filter(|h| h.e == text.len()) {
            cut = cut.min(boundary + h.s);
        }
        if boundary > 0 {
            // Behind the tail, this part's head first: a match across the
            // seam ends within it unless it is a long one, and one found
            // there at all (rare: a split secret) is looked for again over
            // the whole part, where it may go on.
            let mut head = text.len().min(SEAM_HEAD);
            while !text.is_char_boundary(head) {
                head -= 1;
            }
            let mut virt = std::mem::take(&mut self.seam.virt);
            let mut hits = std::mem::take(&mut self.seam.hits);
            loop {
                virt.clear();
                for p in &pieces {
                    virt.push_str(&p.text);
                }
                virt.push_str(text.get(..head).unwrap_or_default());
                hits.clear();
                self.r.scan_text(&virt, &mut self.win, &mut hits);
                hits.retain(|h| h.s < boundary && h.e > boundary);
                if hits.is_empty() || head == text.len() {
                    break;
                }
                head = text.len();
            }
            let n = self.resolve(&mut hits);
            for h in &hits[..n] {
                if h.e == total {
                    cut = cut.min(h.s);
                }
                // the body spans of the match: piece by piece, then here
                let mut spans = Vec::with_capacity(pieces.len() + 1);
                let mut first = None;
                let mut vo = 0;
                for pc in &pieces {
                    let (x, y) = (h.s.max(vo), h.e.min(vo + pc.text.len()));
                    if x < y {
                        spans.push(pc.map.raw(pc.off + x - vo, pc.off + y - vo));
                        first.get_or_insert(&pc.path);
                    }
                    vo += pc.text.len();
                }
                spans.push(raw(0, h.e - boundary));
                let at: Arc<str> = json::render_path(self.body, first.map_or(path, |p| p)).into();
                // What the part's own scan (or the last seam's) already
                // matched of this (a key block running to the part's end)
                // is its beginning: one secret, one finding. Those are
                // among the last findings, from the part it starts in on.
                if let (Some(m), Some(&(a, _)), Some(&(_, b))) =
                    (self.r.meta.get(h.meta), spans.first(), spans.last())
                {
                    let lo = self
                        .findings
                        .iter()
                        .rposition(|f| f.start < a)
                        .map_or(0, |i| i + 1);
                    let mut recent = self.findings.split_off(lo);
                    recent.retain(|f| {
                        !(*f.rule == *m.name && f.path == at && a <= f.start && f.end <= b)
                    });
                    self.findings.append(&mut recent);
                }
                let value = virt.get(h.s..h.e).unwrap_or_default();
                self.emit(h, &spans, value, false, at);
                self.reorder = true;
            }
            (self.seam.virt, self.seam.hits) = (virt, hits);
        }
        let floor = total.saturating_sub(SEAM_MAX);
        cut = cut.max(floor);
        // the new tail: the pieces and this part, from `cut` on
        let mut kept = Vec::with_capacity(pieces.len() + 1);
        let mut vo = 0;
        for mut pc in pieces {
            let len = pc.text.len();
            if vo + len > cut {
                let mut from = cut.saturating_sub(vo);
                while from > 0 && !pc.text.is_char_boundary(from) {
                    from -= 1;
                }
                pc.text.drain(..from);
                pc.off += from;
                kept.push(pc);
            } else {
                self.seam.spare.push(pc);
            }
            vo += len;
        }
        let mut from = cut.saturating_sub(boundary).min(text.len());
        while from > 0 && !text.is_char_boundary(from) {
            from -= 1;
        }
        // this part's piece, in the buffers of a dropped one if there is one
        let (mut tail, mut at, spare_norm) = match self.seam.spare.pop() {
            Some(pc) => (pc.text, pc.path, pc.map),
            None => (String::new(), Vec::new(), PieceMap::Raw(0)),
        };
        tail.clear();
        tail.push_str(text.get(from..).unwrap_or_default());
        at.clear();
        at.extend_from_slice(path);
        let (map, back) = match (fast, spare_norm) {
            (true, _) => (PieceMap::Raw(start), norm),
            (false, PieceMap::Norm(n)) => (PieceMap::Norm(norm), n),
            (false, PieceMap::Raw(_)) => (PieceMap::Norm(norm), Norm::default()),
        };
        kept.push(Piece {
            text: tail,
            off: from,
            map,
            path: at,
        });
        self.seam.pieces = kept;
        back
    }
}
