//! Command-line arguments of `hearth`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use hearth_protocol::{JobParams, SamplingOverrides};
use hearth_shards::SamplingParams;

/// hearth: a private inference mesh for the home. Runs GGUF chat models on this machine;
/// nodes on the same LAN will share them.
#[derive(Debug, Parser)]
#[command(name = "hearth", version, propagate_version = true)]
pub struct Cli {
    /// Where hearth keeps its model cache and state.
    #[arg(long, global = true, env = "HEARTH_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// hearth's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a reply to one prompt and stream it to stdout.
    Run(RunArgs),
    /// Chat with a model in the terminal (/reset starts over, /quit leaves).
    Chat(ChatArgs),
    /// Measure prompt-processing and generation speed (tokens/s) and peak memory.
    Bench(BenchArgs),
    /// Manage the model cache.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Run this machine's node: join the household mesh and serve the HTTP API.
    Node(Box<NodeArgs>),
    /// Create, join or leave a household (the devices that may use each other).
    #[command(subcommand)]
    Household(HouseholdCommand),
    /// The household's conversations: list, show, export, delete.
    #[command(subcommand)]
    History(HistoryCommand),
    /// List this machine's compute devices: the CPU and every GPU adapter wgpu sees, named as
    /// `--device gpu:N` takes them.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the household's nodes: models, load, speed, devices (needs a running node).
    Peers {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show where a request for MODEL would run: the ranked nodes, or the split over several
    /// (each stage's node, layers and memory) with its estimated speed (needs a running node).
    Route {
        /// Model name or digest prefix.
        model: String,
        /// Plan a split over this many nodes even if one could serve the model whole.
        #[arg(long, value_name = "N", conflicts_with = "stages")]
        split: Option<u32>,
        /// Plan a split over these nodes, in this order (comma-separated names).
        #[arg(long, value_name = "NAMES")]
        stages: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `hearth node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Config file [default: <data-dir>/config.toml]; flags and environment win over it.
    #[arg(long, env = "HEARTH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub settings: crate::config::Settings,
}

/// `hearth household ...`.
#[derive(Debug, Subcommand)]
pub enum HouseholdCommand {
    /// Create a household on this device and print the code other devices join with.
    Init {
        /// Replace the household this device is in.
        #[arg(long)]
        force: bool,
    },
    /// Join a household with the code `hearth household init` printed.
    Join {
        /// The join code (hearth-...).
        code: String,
        /// Replace the household this device is in.
        #[arg(long)]
        force: bool,
    },
    /// Print this device's household: join code, fingerprint, revoked devices.
    Show,
    /// Revoke a device: every node of the household refuses it from now on.
    Remove {
        /// Peer id, or the node's name (names need the local node running).
        peers: Vec<String>,
    },
}

/// Which model, and how to run it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a name from `hearth models list`, a digest prefix, or a path to a .gguf file.
    #[arg(short = 'm', long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(short = 't', long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Context length in tokens (capped at the model's own).
    #[arg(long, value_name = "TOKENS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(16..))]
    pub ctx: u32,
    /// Have this household node serve the reply (needs the local node running).
    #[arg(long, value_name = "NAME", conflicts_with = "local")]
    pub node: Option<String>,
    /// Run the model in this process even when a local node is running.
    #[arg(long)]
    pub local: bool,
}

/// Sampling and stopping options shared by `run` and `chat`. Negative numbers parse, so that
/// `-n -5` is reported as an invalid value rather than an unknown flag.
#[derive(Debug, Args)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// Randomness; 0 always picks the most likely token [default: the model's, else 0.8].
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Sample only from the K most likely tokens, 0: no limit [default: the model's, else 40].
    #[arg(long, value_name = "K")]
    pub top_k: Option<u32>,
    /// Sample only from the most likely tokens adding up to probability P, 0 < P ≤ 1
    /// [default: the model's, else 0.95].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P times the most likely one, 0: off [default: the model's,
    /// else 0.05].
    #[arg(long, value_name = "P", allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Penalty for repeating recent tokens, 1: off [default: the model's, else 1.1].
    #[arg(long, allow_negative_numbers = true)]
    pub repeat_penalty: Option<f32>,
    /// How many recent tokens the repeat penalty considers [default: the model's, else 64].
    #[arg(long, value_name = "N")]
    pub repeat_last_n: Option<u32>,
    /// Random seed; the same seed gives the same reply.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Most tokens to generate per reply.
    #[arg(
        short = 'n',
        long,
        default_value_t = 512,
        value_name = "N",
        allow_negative_numbers = true
    )]
    pub max_tokens: u32,
    /// Stop before this text (repeatable).
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The request's settings, as every interface sends them: unset sampling settings are left
    /// to the model's recommendation and hearth's defaults, wherever the reply is made.
    pub fn params(&self) -> hearth_shards::Result<JobParams> {
        let params = JobParams {
            sampling: SamplingOverrides {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                repeat_last_n: self.repeat_last_n,
            },
            seed: self
                .seed
                .unwrap_or_else(|| random_seed(SamplingParams::default().seed)),
            max_tokens: self.max_tokens,
            stop: self.stop.clone(),
            json: false,
            context: None,
            keep_alive: None,
        };
        SamplingParams::check(&params.sampling)?;
        Ok(params)
    }
}

fn random_seed(fallback: u64) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(fallback, |d| {
            d.as_nanos() as u64 ^ u64::from(std::process::id())
        })
}

/// `hearth run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt ("-" reads it from stdin).
    #[arg(short = 'p', long, value_name = "TEXT")]
    pub prompt: String,
    /// System message for chat models.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Send the prompt as-is, without the model's chat template (control tokens written in it,
    /// like `<|im_start|>`, are the tokens they name).
    #[arg(long)]
    pub raw: bool,
    /// With --raw: control tokens written in the prompt are plain text.
    #[arg(long, requires = "raw")]
    pub no_special: bool,
    /// Print token counts and speed to stderr when done.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `hearth chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// System message that opens the conversation.
    #[arg(long, value_name = "TEXT")]
    pub system: Option<String>,
    /// Print token counts and speed after each reply.
    #[arg(long)]
    pub stats: bool,
    /// Do not record this conversation in the household's history.
    #[arg(long)]
    pub no_history: bool,
    /// Go on with a recorded conversation (its id from `hearth history list`).
    #[arg(long, value_name = "ID", conflicts_with = "system")]
    pub resume: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// `hearth history`.
#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// List conversations, newest first.
    List {
        /// Only conversations whose title or messages contain this text.
        #[arg(short, long, value_name = "TEXT")]
        query: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a conversation's newest branch.
    Show {
        /// The conversation's id (a unique prefix will do).
        id: String,
    },
    /// Write a conversation as automerge, json or markdown.
    Export {
        /// The conversation's id (a unique prefix will do).
        id: String,
        /// automerge, json or markdown.
        #[arg(long, default_value = "markdown")]
        format: String,
        /// Write here instead of to stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Delete a conversation on every device of the household.
    Delete {
        /// The conversation's id (a unique prefix will do).
        id: String,
    },
}

/// `hearth bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model: a name from `hearth models list`, a digest prefix, or a path to a .gguf file.
    #[arg(short = 'm', long, value_name = "MODEL")]
    pub model: String,
    /// Thread counts to measure, comma-separated (default: all cores).
    #[arg(short = 't', long, value_name = "N[,N...]", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Vec<u32>,
    /// Prompt-processing test: tokens in one forward pass (0 skips it).
    #[arg(
        short = 'p',
        long = "n-prompt",
        default_value_t = 512,
        value_name = "TOKENS"
    )]
    pub n_prompt: usize,
    /// Generation test: tokens decoded one by one (0 skips it).
    #[arg(
        short = 'n',
        long = "n-gen",
        default_value_t = 128,
        value_name = "TOKENS"
    )]
    pub n_gen: usize,
    /// Also measure batched generation: this many sessions decoding together, one shared step
    /// per token (reports aggregate tokens/s as tgNxS).
    #[arg(short = 's', long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub sessions: u32,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub repetitions: u32,
    /// Print results as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Where to run: cpu, gpu, gpu:N or auto (as `hearth node --device`).
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

/// `hearth models ...`.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// List cached models: name, family, quantization, size, layers, digest.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Verify a GGUF file and copy it into the cache; or, with --scan, find the GGUF files
    /// other tools keep here (Hugging Face, Ollama, LM Studio) and link the chosen ones in.
    Import {
        /// The .gguf file.
        #[arg(required_unless_present = "scan", conflicts_with = "scan")]
        path: Option<PathBuf>,
        /// List the GGUF files in the Hugging Face hub cache, Ollama's store and LM Studio's
        /// models folder, and whether hearth runs them.
        #[arg(long)]
        scan: bool,
        /// With --scan: import every supported file found (as hard links, not copies).
        #[arg(long, requires = "scan", conflicts_with = "pick")]
        all: bool,
        /// With --scan: import these (numbers from the list), e.g. --pick 1,3.
        #[arg(long, requires = "scan", value_delimiter = ',')]
        pick: Vec<usize>,
        /// Name to list it under (default: the file name without extension, lowercased).
        #[arg(long)]
        name: Option<String>,
        /// Refuse the file unless its SHA-256 is this.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
    },
    /// Fetch a model from a household node that holds it (through the running node): verified
    /// chunk by chunk, from every holder at once, resumed where an interrupted pull stopped.
    Pull {
        /// Its name, digest or digest prefix, as `hearth peers` lists it.
        model: String,
        /// Name to list it under here (default: the holder's).
        #[arg(long)]
        name: Option<String>,
    },
    /// Keep a model when the cache makes room for another (see `hearth node --cache-size`).
    Pin {
        /// Name or digest prefix.
        model: String,
    },
    /// Let a pinned model be removed again when the cache makes room.
    Unpin {
        /// Name or digest prefix.
        model: String,
    },
    /// Delete a cached model.
    Remove {
        /// Name or digest prefix.
        model: String,
    },
}
