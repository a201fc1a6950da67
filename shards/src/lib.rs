//! hearth's inference engine: GGUF models on CPU with its own AVX2 quantized kernels (candle's for
//! the rarer block types), run as whole models or as layer-range stages of a split, with
//! tokenizer, chat template and sampling.

pub mod activation;
pub mod batch;
pub mod chat_template;
pub mod error;
pub mod family;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod json;
pub mod kernels;
pub mod kv_cache;
pub mod model;
pub mod ops;
pub mod packed;
pub mod quant;
pub mod sampling;
pub mod spec;
pub mod stage;
pub mod tokenizer;

pub use batch::{BatchStats, DecodeBatcher};
pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{Error, Result};
pub use generate::{
    decode_reply, prefill, Completion, Decoded, Finish, GenerateParams, Generator, Piece, Resume,
    Steps, PREFILL_CHUNK,
};
pub use gguf::Gguf;
pub use kv_cache::KvCache;
pub use model::{default_threads, thread_pool, Model, ModelSummary};
pub use sampling::{Sampler, SamplingOverrides, SamplingParams};
pub use spec::ModelSpec;
pub use stage::{Placement, Stage, StageInput, StageOutput};
pub use tokenizer::{StreamDecoder, Tokenizer};
