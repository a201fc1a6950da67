//! SentencePiece tokenization as llama.cpp does it for `llama`-type vocabularies: characters
//! merged pairwise by best score, bytes as `<0xXX>` tokens for characters outside the vocabulary.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::TokenType;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

pub(super) struct Spm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_ids: [Option<u32>; 256],
    unk: u32,
    add_space_prefix: bool,
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Highest score first; on ties, the leftmost pair first.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl Spm {
    pub(super) fn new(gguf: &Gguf, tokens: &[String], types: &[TokenType]) -> Result<Self> {
        let scores: Vec<f32> = match gguf.metadata.get("tokenizer.ggml.scores") {
            Some(Value::Array(a)) if a.len() == tokens.len() => {
                a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect()
            }
            _ => {
                return Err(Error::Tokenizer(
                    "SentencePiece vocabulary has no scores".into(),
                ))
            }
        };
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut byte_ids = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
            if types[i] == TokenType::Byte {
                if let Some(b) = parse_byte_token(t) {
                    byte_ids[b as usize] = Some(i as u32);
                }
            }
        }
        let unk = gguf
            .get_usize("tokenizer.ggml.unknown_token_id")
            .unwrap_or(0) as u32;
        let add_space_prefix = !matches!(
            gguf.metadata.get("tokenizer.ggml.add_space_prefix"),
            Some(Value::Bool(false))
        );
        Ok(Spm {
            ids,
            scores,
            byte_ids,
            unk,
            add_space_prefix,
        })
    }

    pub(super) fn encode(&self, fragment: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(fragment.len() + 3);
        if self.add_space_prefix && after_special {
            text.push(' ');
        }
        text.push_str(fragment);
        let text = text.replace(' ', "\u{2581}");
        let mut symbols: Vec<Symbol> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
        let try_add = |queue: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<(usize, usize), (usize, usize)>,
                       symbols: &[Symbol],
                       l: Option<usize>,
                       r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let (a, b) = (symbols[l], symbols[r]);
            let piece = &text[a.start..b.start + b.len];
            if let Some(&id) = self.ids.get(piece) {
                queue.push(Bigram {
                    left: l,
                    right: r,
                    score: self.scores[id as usize],
                    len: piece.len(),
                });
                rev.insert((a.start, piece.len()), (l, r));
            }
        };
        for i in 1..symbols.len() {
            try_add(&mut queue, &mut rev_merge, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (symbols[bg.left], symbols[bg.right]);
            // Skip pairs whose symbols changed since the pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != bg.len {
                continue;
            }
            symbols[bg.left].len += r.len;
            symbols[bg.right].len = 0;
            symbols[bg.left].next = r.next;
            if let Some(n) = r.next {
                symbols[n].prev = Some(bg.left);
            }
            let left = symbols[bg.left];
            try_add(
                &mut queue,
                &mut rev_merge,
                &symbols,
                left.prev,
                Some(bg.left),
            );
            try_add(
                &mut queue,
                &mut rev_merge,
                &symbols,
                Some(bg.left),
                left.next,
            );
        }
        let mut i = if symbols.is_empty() { None } else { Some(0) };
        while let Some(idx) = i {
            let s = symbols[idx];
            self.resegment(&text, s.start, s.len, &rev_merge, &symbols, out);
            i = s.next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        start: usize,
        len: usize,
        rev: &HashMap<(usize, usize), (usize, usize)>,
        symbols: &[Symbol],
        out: &mut Vec<u32>,
    ) {
        let piece = &text[start..start + len];
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        match rev.get(&(start, len)) {
            Some(&(l, r)) => {
                let (a, b) = (symbols[l].start, symbols[r].start);
                self.resegment(text, a, b - a, rev, symbols, out);
                self.resegment(text, b, start + len - b, rev, symbols, out);
            }
            None => {
                for &b in piece.as_bytes() {
                    out.push(self.byte_ids[b as usize].unwrap_or(self.unk));
                }
            }
        }
    }

    pub(super) fn decode_token(&self, text: &str, ty: TokenType) -> Vec<u8> {
        if ty == TokenType::Byte {
            if let Some(b) = parse_byte_token(text) {
                return vec![b];
            }
        }
        text.replace('\u{2581}', " ").into_bytes()
    }
}

/// `<0x0A>` → 10.
fn parse_byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}
