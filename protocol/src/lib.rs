//! hearth's wire format: the messages peers exchange, their length-prefixed framing and limits,
//! and the household join code. Pure data and pure functions: no sockets, no runtime.

pub mod blob;
pub mod card;
pub mod frame;
pub mod history;
pub mod household;
pub mod job;
pub mod stage;
pub mod sync;

pub use blob::{BlobFrame, BlobRequest, Manifest, ManifestBuilder, ManifestReader};
pub use card::{
    Card, CardReply, CardRequest, Device, DeviceKind, GpuAdapter, ModelInfo, ModelLayout,
    ModelPlacement, ModelSpeed,
};
pub use frame::{decode, encode, FrameBuffer, FrameError, MAX_FRAME};
pub use household::{HouseholdSecret, JoinCodeError};
pub use job::{
    is_digest, ChatMessage, FailCode, Finish, JobEvent, JobParams, JobRequest, Prompt, Resume,
    SamplingOverrides, Usage, MAX_PROMPT_TOKENS,
};
pub use stage::{Split, StageFrame, StageOpen, StagePlan, WireDtype};
pub use sync::SyncFrame;

/// Version of the hearth protocol spoken by this build; peers with another version are refused.
/// (2: jobs name models by full digest only; `FailCode::ContextOverflow`; sampling settings
/// left unset for the serving node; raw prompts say whether control tokens are parsed.
/// 3: split stages, memory and layouts on cards. 4: cards count tokens generated. 5: model files
/// between peers, manifest roots on cards. 6: the keys-and-values budget on
/// cards, `FailCode::TooLarge`.)
pub const PROTOCOL_VERSION: u32 = 7;

/// libp2p protocol name of the capability-card exchange.
pub const CARD_PROTOCOL: &str = "/hearth/card/1";

/// libp2p protocol name of remote jobs.
pub const JOB_PROTOCOL: &str = "/hearth/job/1";

/// libp2p protocol name of history sync.
pub const SYNC_PROTOCOL: &str = "/hearth/sync/1";

/// Pipeline stages of a split model: sessions, token ids and hidden states.
pub const STAGE_PROTOCOL: &str = "/hearth/stage/1";

/// Model files between peers: manifests and verified chunks.
pub const BLOB_PROTOCOL: &str = "/hearth/blob/1";
