//! The engine's error type: every variant says what went wrong and what to do about it.

use std::path::PathBuf;

/// Errors from loading and running models.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a GGUF model file ({reason}); point hearth at a .gguf file")]
    NotGguf { path: PathBuf, reason: String },
    #[error("{path} is damaged: {reason}; download or import the file again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("model uses architecture `{0}`, which hearth does not support; supported: {1}")]
    UnsupportedArchitecture(String, String),
    #[error(
        "tensor {name} has type {ty}, which hearth cannot compute with; supported: {supported}"
    )]
    UnsupportedTensorType {
        name: String,
        ty: String,
        supported: String,
    },
    #[error("model metadata is missing `{0}`; the GGUF file is incomplete or from an unsupported converter")]
    MissingMetadata(String),
    #[error("model metadata `{key}` is invalid: {reason}")]
    BadMetadata { key: String, reason: String },
    #[error("model is missing tensor `{0}`; the GGUF file is incomplete or not the architecture it claims")]
    MissingTensor(String),
    #[error("tensor {name} has shape {found:?}, expected {expected:?}")]
    BadShape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("layer range {start}..{end} is invalid for a model with {layers} layers")]
    BadLayerRange {
        start: usize,
        end: usize,
        layers: usize,
    },
    #[error("prompt is {prompt} tokens but the context holds {context}; shorten the conversation (/reset in chat) or raise --ctx")]
    ContextOverflow { prompt: usize, context: usize },
    #[error("stage input does not fit: {0}")]
    BadStageInput(String),
    #[error("invalid parameter: {0}")]
    BadParameter(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("GPU: {0}")]
    Gpu(String),
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
