//! Tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata: byte-level BPE (`gpt2`,
//! e.g. SmolLM2) or SentencePiece with scores (`llama`, e.g. Gemma 3). Special tokens in the text
//! are recognised as llama.cpp does: control tokens when asked, user-defined tokens always.

mod bpe;
mod spm;

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::gguf::{Gguf, Value};

/// llama.cpp token types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_raw(raw: i64) -> Self {
        match raw {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Normal,
        }
    }
}

enum Model {
    Bpe(bpe::Bpe),
    Spm(spm::Spm),
}

/// A GGUF model's tokenizer.
pub struct Tokenizer {
    tokens: Vec<String>,
    types: Vec<TokenType>,
    ids: HashMap<String, u32>,
    /// Control, user-defined and unknown tokens, longest text first.
    specials: Vec<u32>,
    model: Model,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    /// Tokens that end a reply: EOS, end-of-turn and their usual relatives.
    stop_tokens: Vec<u32>,
    /// Each token's text alone, for constrained sampling (made on first use).
    texts: std::sync::OnceLock<Vec<Option<String>>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({} tokens)", self.tokens.len())
    }
}

/// Token texts that end a turn in common chat formats.
const END_OF_TURN_TEXTS: &[&str] = &[
    "<|im_end|>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|endoftext|>",
    "<|end|>",
];

impl Tokenizer {
    /// Reads the tokenizer stored in a GGUF file.
    pub fn from_gguf(gguf: &Gguf) -> Result<Self> {
        let kind = gguf.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> = gguf
            .get_array("tokenizer.ggml.tokens")?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(Error::Tokenizer(format!(
                    "token is not a string: {other:?}"
                ))),
            })
            .collect::<Result<_>>()?;
        let n = tokens.len();
        let types: Vec<TokenType> = match gguf.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) if a.len() == n => a
                .iter()
                .map(|v| TokenType::from_raw(v.as_f64().unwrap_or(1.0) as i64))
                .collect(),
            _ => vec![TokenType::Normal; n],
        };
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let id_key = |k: &str| gguf.get_usize(k).ok().filter(|&v| v < n).map(|v| v as u32);
        let bos = id_key("tokenizer.ggml.bos_token_id");
        let eos = id_key("tokenizer.ggml.eos_token_id");
        let eot = id_key("tokenizer.ggml.eot_token_id");
        let add_bos = matches!(
            gguf.metadata.get("tokenizer.ggml.add_bos_token"),
            Some(Value::Bool(true))
        );
        let mut specials: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                matches!(
                    types[i as usize],
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        specials.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].len()));
        let mut stop_tokens: Vec<u32> = eos.into_iter().chain(eot).collect();
        for text in END_OF_TURN_TEXTS {
            if let Some(&id) = ids.get(*text) {
                if types[id as usize] == TokenType::Control && !stop_tokens.contains(&id) {
                    stop_tokens.push(id);
                }
            }
        }
        let model = match kind {
            "gpt2" => Model::Bpe(bpe::Bpe::new(gguf, &ids)?),
            "llama" => Model::Spm(spm::Spm::new(gguf, &tokens, &types)?),
            other => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer model `{other}` is not supported; supported: gpt2 (byte-level BPE), llama (SentencePiece)"
                )))
            }
        };
        Ok(Tokenizer {
            tokens,
            types,
            ids,
            specials,
            model,
            bos,
            eos,
            add_bos,
            stop_tokens,
            texts: std::sync::OnceLock::new(),
        })
    }

    /// Each token's text on its own: `None` for control, user-defined, unknown and unused
    /// tokens, and for byte tokens that are not whole characters alone (text is lossy there).
    pub fn texts(&self) -> &[Option<String>] {
        self.texts.get_or_init(|| {
            (0..self.tokens.len() as u32)
                .map(|id| {
                    let ty = self.types[id as usize];
                    if !matches!(ty, TokenType::Normal | TokenType::Byte) {
                        return None;
                    }
                    String::from_utf8(self.token_bytes(id)).ok()
                })
                .collect()
        })
    }

    /// Vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// Whether the model expects BOS at the start of every sequence.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Tokens that end generation.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The text of a token as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a token text, if it is in the vocabulary.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// Encodes `text`. With `parse_special`, control tokens written in the text (such as
    /// `<|im_start|>`) become their ids; otherwise they are tokenized as plain text. With
    /// `add_bos`, BOS is prepended when the model asks for it.
    pub fn encode(&self, text: &str, add_bos: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_bos && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Special(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    match &self.model {
                        Model::Bpe(b) => b.encode(t, &mut out),
                        Model::Spm(s) => s.encode(t, prev_special, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        out
    }

    /// The bytes a token stands for when printed (control tokens print nothing).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.tokens.get(id as usize) else {
            return Vec::new();
        };
        match self.types[id as usize] {
            TokenType::Control | TokenType::Unknown | TokenType::Unused => Vec::new(),
            TokenType::UserDefined => text.as_bytes().to_vec(),
            TokenType::Byte | TokenType::Normal => match &self.model {
                Model::Bpe(b) => b.decode_token(text),
                Model::Spm(s) => s.decode_token(text, self.types[id as usize]),
            },
        }
    }

    /// Decodes tokens to text; invalid UTF-8 (a token sequence cut mid-character) is replaced.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut fragments = vec![Fragment::Text(text)];
        for &id in &self.specials {
            let ty = self.types[id as usize];
            if !parse_special && ty != TokenType::UserDefined {
                continue;
            }
            let needle = self.tokens[id as usize].as_str();
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for f in fragments {
                match f {
                    Fragment::Text(mut t) => {
                        while let Some(at) = t.find(needle) {
                            if at > 0 {
                                next.push(Fragment::Text(&t[..at]));
                            }
                            next.push(Fragment::Special(id));
                            t = &t[at + needle.len()..];
                        }
                        if !t.is_empty() {
                            next.push(Fragment::Text(t));
                        }
                    }
                    special => next.push(special),
                }
            }
            fragments = next;
        }
        fragments
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Special(u32),
}

/// Turns a stream of token ids into text pieces, holding back bytes of a character that is
/// split across tokens until it is complete.
#[derive(Debug, Default)]
pub struct StreamDecoder {
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Adds a token and returns the text that became complete.
    pub fn push(&mut self, tokenizer: &Tokenizer, id: u32) -> String {
        self.pending.extend(tokenizer.token_bytes(id));
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits; an invalid one is replaced now.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => {
                let s = String::from_utf8_lossy(&self.pending).into_owned();
                self.pending.clear();
                return s;
            }
        };
        let rest = self.pending.split_off(valid);
        let done = std::mem::replace(&mut self.pending, rest);
        String::from_utf8(done).expect("validated above")
    }

    /// Whatever is still held back, as text.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}
