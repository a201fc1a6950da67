//! Byte-level BPE (GPT-2 style) with the pre-tokenizers llama.cpp knows by name.

use std::collections::HashMap;

use fancy_regex::Regex;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// GPT-2's split: contractions, letters, numbers, other symbols, whitespace.
const GPT2_SPLIT: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split (also used by several later BPE models).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

pub(super) struct Bpe {
    /// Splits applied in order; a later split refines the pieces of an earlier one.
    splits: Vec<Regex>,
    /// (left id, right id) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// Token of each byte's character; a vocabulary may lack a few control bytes.
    byte_ids: [Option<u32>; 256],
    unk: u32,
    /// byte-level char → byte, for decoding.
    char_bytes: HashMap<char, u8>,
}

/// GPT-2's reversible map from bytes to printable characters.
fn bytes_to_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable =
            (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            n += 1;
            char::from_u32(255 + n).expect("below surrogates")
        };
    }
    map
}

impl Bpe {
    pub(super) fn new(gguf: &Gguf, ids: &HashMap<String, u32>) -> Result<Self> {
        let pre = gguf.get_str("tokenizer.ggml.pre").unwrap_or("default");
        let patterns: &[&str] = match pre {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => &[r"\p{N}", GPT2_SPLIT],
            "llama3" | "llama-bpe" | "smaug-bpe" | "dbrx" => &[LLAMA3_SPLIT],
            "gpt-2" | "gpt2" | "default" | "phi-2" | "jina-es" | "jina-de" | "olmo" | "roberta-bpe" => &[GPT2_SPLIT],
            other => {
                return Err(Error::Tokenizer(format!(
                    "BPE pre-tokenizer `{other}` is not supported; supported: smollm, starcoder, llama3, gpt2"
                )))
            }
        };
        let splits = patterns
            .iter()
            .map(|p| Regex::new(p).expect("static pattern compiles"))
            .collect();
        let chars = bytes_to_chars();
        let mut byte_ids = [None; 256];
        for (b, c) in chars.iter().enumerate() {
            byte_ids[b] = ids.get(&c.to_string()).copied();
        }
        if byte_ids.iter().filter(|b| b.is_some()).count() < 128 {
            return Err(Error::Tokenizer(
                "vocabulary is not byte-level: most byte tokens are missing".into(),
            ));
        }
        let unk = gguf
            .get_usize("tokenizer.ggml.unknown_token_id")
            .unwrap_or(0) as u32;
        let char_bytes = chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        let mut merges = HashMap::new();
        for (rank, m) in gguf.get_array("tokenizer.ggml.merges")?.iter().enumerate() {
            let Value::String(m) = m else {
                return Err(Error::Tokenizer("merge is not a string".into()));
            };
            let Some((a, b)) = m.split_once(' ') else {
                return Err(Error::Tokenizer(format!("merge `{m}` is not two tokens")));
            };
            let (Some(&l), Some(&r), Some(&merged)) =
                (ids.get(a), ids.get(b), ids.get(&format!("{a}{b}")))
            else {
                continue;
            };
            merges.entry((l, r)).or_insert((rank as u32, merged));
        }
        Ok(Bpe {
            splits,
            merges,
            byte_ids,
            unk,
            char_bytes,
        })
    }

    pub(super) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut pieces = vec![text];
        for re in &self.splits {
            pieces = pieces
                .into_iter()
                .flat_map(|p| split_keep_all(re, p))
                .collect();
        }
        let mut symbols = Vec::new();
        for piece in pieces {
            symbols.clear();
            symbols.extend(
                piece
                    .bytes()
                    .map(|b| self.byte_ids[b as usize].unwrap_or(self.unk)),
            );
            self.merge(&mut symbols);
            out.extend_from_slice(&symbols);
        }
    }

    /// Applies merges lowest rank first until none applies.
    fn merge(&self, symbols: &mut Vec<u32>) {
        loop {
            let best = symbols
                .windows(2)
                .enumerate()
                .filter_map(|(i, w)| {
                    self.merges
                        .get(&(w[0], w[1]))
                        .map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, id)) = best else { return };
            symbols[i] = id;
            symbols.remove(i + 1);
        }
    }

    pub(super) fn decode_token(&self, text: &str) -> Vec<u8> {
        text.chars()
            .flat_map(|c| match self.char_bytes.get(&c) {
                Some(&b) => vec![b],
                None => c.to_string().into_bytes(),
            })
            .collect()
    }
}

/// Splits `text` into the regex's matches and the gaps between them, keeping both.
fn split_keep_all<'t>(re: &Regex, text: &'t str) -> Vec<&'t str> {
    let mut out = Vec::new();
    let mut last = 0;
    for m in re.find_iter(text) {
        // A match error (backtrack limit) leaves the rest as one piece.
        let Ok(m) = m else { break };
        if m.start() > last {
            out.push(&text[last..m.start()]);
        }
        if m.end() > m.start() {
            out.push(m.as_str());
        }
        last = m.end();
    }
    if last < text.len() {
        out.push(&text[last..]);
    }
    out
}
