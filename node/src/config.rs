//! `hearth node` settings: every one is a flag, an environment variable and a key of the TOML
//! config file (`<data-dir>/config.toml`, or `--config`). Flags and variables win over the file,
//! the file over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use hearth_protocol::SamplingOverrides;
use hearth_shards::gpu::DeviceChoice;
use hearth_shards::SamplingParams;
use libp2p::Multiaddr;
use serde::Deserialize;

/// The settings as given (flag, environment or file); unset ones take defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This node's name in the household (default: the host name).
    #[arg(long, env = "HEARTH_NAME")]
    pub name: Option<String>,
    /// libp2p listen address for peers [default: /ip4/0.0.0.0/tcp/4318].
    #[arg(long, env = "HEARTH_LISTEN", value_name = "MULTIADDR")]
    pub listen: Option<String>,
    /// HTTP API address [default: 127.0.0.1:4317]; anything but loopback needs --api-token.
    #[arg(long, env = "HEARTH_API", value_name = "ADDR")]
    pub api: Option<String>,
    /// Token clients must send as `Authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "HEARTH_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub api_token: Option<String>,
    /// Also serve the APIs on this address, for apps that expect Ollama there (Ollama's own
    /// port is 127.0.0.1:11434) [default: off].
    #[arg(long, env = "HEARTH_OLLAMA_API", value_name = "ADDR")]
    pub ollama_api: Option<String>,
    /// Peer to dial by address, for networks without multicast (repeatable, or comma-separated).
    #[arg(
        long = "peer",
        env = "HEARTH_PEERS",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub peers: Vec<String>,
    /// Find peers with mDNS on the LAN [default: true].
    #[arg(long, env = "HEARTH_MDNS", value_name = "BOOL")]
    pub mdns: Option<bool>,
    /// Jobs run at once; those decoding the same model share each step [default: 4].
    #[arg(long, env = "HEARTH_MAX_JOBS", value_name = "N")]
    pub max_jobs: Option<u32>,
    /// Jobs that may wait; beyond this requests get "busy" [default: 16].
    #[arg(long, env = "HEARTH_MAX_QUEUE", value_name = "N")]
    pub max_queue: Option<u32>,
    /// Worker threads per model [default: all cores].
    #[arg(long, env = "HEARTH_THREADS", value_name = "N")]
    pub threads: Option<u32>,
    /// Context length per job, in tokens [default: 4096, capped at the model's].
    #[arg(long, env = "HEARTH_CTX", value_name = "TOKENS")]
    pub ctx: Option<u32>,
    /// Memory this node offers for models and split stages, e.g. 300MB or 2GiB [default: all
    /// that is free]. Routing and split planning respect it.
    #[arg(long, env = "HEARTH_MAX_MEMORY", value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// Most disk the model cache may take, e.g. 20GB [default: no limit]. A pull that needs room
    /// removes the least recently used models first, never one that is loaded, being pulled or
    /// pinned (`hearth models pin`).
    #[arg(long, env = "HEARTH_CACHE_SIZE", value_name = "SIZE")]
    pub cache_size: Option<String>,
    /// Memory for keys and values (KV caches) of every reply on this node together, e.g.
    /// 512MB [default: a quarter of --max-memory, else an eighth of the memory free at start,
    /// at least 256 MB]. A reply reserves its prompt plus max_tokens before it starts (waiting
    /// while running ones hold it); finished replies' caches, kept for follow-up turns, use what
    /// is left and go least recently used first.
    #[arg(long, env = "HEARTH_KV_MEMORY", value_name = "SIZE")]
    pub kv_memory: Option<String>,
    /// Where models run: auto (a discrete GPU when there is one, else the CPU), cpu, gpu (the
    /// best adapter wgpu sees, software ones last) or gpu:N (`hearth devices` lists them)
    /// [default: auto]. A GPU that cannot load a model leaves it on the CPU, with a warning.
    #[arg(long, env = "HEARTH_DEVICE", value_name = "DEVICE")]
    pub device: Option<String>,
    /// GPU memory models may take, e.g. 6GB [default: the card's total for NVIDIA (NVML),
    /// unknown otherwise: each model is tried whole]. A model larger than this runs its last
    /// layers on the GPU and the rest on the CPU.
    #[arg(long, env = "HEARTH_GPU_MEMORY", value_name = "SIZE")]
    pub gpu_memory: Option<String>,
    /// Pull a model this node lacks from the household when a request for it goes to a slower
    /// or busier node and the estimate (`GET /api/route`) says the pull pays within a few
    /// replies; the request itself is served where routing sent it [default: false].
    #[arg(long, env = "HEARTH_PULL_WHEN_FASTER", value_name = "BOOL")]
    pub pull_when_faster: Option<bool>,
    /// Models to load at start rather than at their first request (repeatable).
    #[arg(
        long = "load",
        env = "HEARTH_LOAD",
        value_name = "MODEL",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub load: Vec<String>,
    /// Seconds a request may wait for a node to start its reply (every job slot busy) before
    /// it gets "busy" (HTTP 503 with Retry-After) [default: 60].
    #[arg(long, env = "HEARTH_QUEUE_TIMEOUT", value_name = "SECONDS")]
    pub queue_timeout: Option<u64>,
    /// Seconds in-flight replies get to finish at shutdown [default: 5].
    #[arg(long, env = "HEARTH_GRACE", value_name = "SECONDS")]
    pub grace: Option<u64>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "HEARTH_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Sampling defaults for requests this node receives (config file only, a `[sampling]`
    /// table: temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n); a request's own
    /// settings win, and unset ones come from the model's recommendation or hearth's defaults.
    #[arg(skip)]
    pub sampling: Option<SamplingOverrides>,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub listen: Multiaddr,
    pub api: SocketAddr,
    pub api_token: Option<String>,
    pub ollama_api: Option<SocketAddr>,
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    pub max_jobs: usize,
    pub max_queue: usize,
    pub threads: Option<usize>,
    pub ctx: usize,
    /// Bytes offered for models; `None`: all that is free.
    pub max_memory: Option<u64>,
    /// Most bytes the model cache may hold; `None`: no limit.
    pub cache_size: Option<u64>,
    /// Bytes for every reply's keys and values together; `None`: the default (see `kv_memory`).
    pub kv_memory: Option<u64>,
    /// Where models run.
    pub device: DeviceChoice,
    /// GPU bytes models may take; `None`: not given (see `gpu_memory`).
    pub gpu_memory: Option<u64>,
    /// Pull models here when routing estimates it pays.
    pub pull_when_faster: bool,
    pub load: Vec<String>,
    pub grace: std::time::Duration,
    pub queue_timeout: std::time::Duration,
    pub log_format: LogFormat,
    pub sampling: SamplingOverrides,
}

impl Settings {
    /// Reads the config file at `path`; a missing file is empty settings unless `required`.
    pub fn from_file(path: &Path, required: bool) -> Result<Settings> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not a valid hearth config", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                Ok(Settings::default())
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// These settings, with unset ones taken from `fallback`.
    pub fn or(self, fallback: Settings) -> Settings {
        let vec_or = |a: Vec<String>, b: Vec<String>| if a.is_empty() { b } else { a };
        Settings {
            name: self.name.or(fallback.name),
            listen: self.listen.or(fallback.listen),
            api: self.api.or(fallback.api),
            api_token: self.api_token.or(fallback.api_token),
            ollama_api: self.ollama_api.or(fallback.ollama_api),
            peers: vec_or(self.peers, fallback.peers),
            mdns: self.mdns.or(fallback.mdns),
            max_jobs: self.max_jobs.or(fallback.max_jobs),
            max_queue: self.max_queue.or(fallback.max_queue),
            threads: self.threads.or(fallback.threads),
            ctx: self.ctx.or(fallback.ctx),
            max_memory: self.max_memory.or(fallback.max_memory),
            cache_size: self.cache_size.or(fallback.cache_size),
            kv_memory: self.kv_memory.or(fallback.kv_memory),
            device: self.device.or(fallback.device),
            gpu_memory: self.gpu_memory.or(fallback.gpu_memory),
            pull_when_faster: self.pull_when_faster.or(fallback.pull_when_faster),
            load: vec_or(self.load, fallback.load),
            grace: self.grace.or(fallback.grace),
            queue_timeout: self.queue_timeout.or(fallback.queue_timeout),
            log_format: self.log_format.or(fallback.log_format),
            sampling: self.sampling.or(fallback.sampling),
        }
    }

    /// Applies defaults and checks every value.
    pub fn resolve(self) -> Result<NodeConfig> {
        let listen = self.listen.as_deref().unwrap_or("/ip4/0.0.0.0/tcp/4318");
        let listen: Multiaddr = listen.parse().with_context(|| {
            format!("--listen {listen} is not a multiaddr like /ip4/0.0.0.0/tcp/4318")
        })?;
        let api = self.api.as_deref().unwrap_or("127.0.0.1:4317");
        let api: SocketAddr = api
            .parse()
            .with_context(|| format!("--api {api} is not an address like 127.0.0.1:4317"))?;
        let api_token = self.api_token.filter(|t| !t.is_empty());
        if !api.ip().is_loopback() && api_token.is_none() {
            bail!(
                "the API on {api} would be reachable from other machines; set --api-token \
                 (or HEARTH_API_TOKEN) so only clients with the token get in, or bind to 127.0.0.1"
            );
        }
        let ollama_api = match self.ollama_api.as_deref() {
            None | Some("") => None,
            Some(a) => {
                let addr: SocketAddr = a.parse().with_context(|| {
                    format!("--ollama-api {a} is not an address like 127.0.0.1:11434")
                })?;
                if !addr.ip().is_loopback() && api_token.is_none() {
                    bail!(
                        "the Ollama API on {addr} would be reachable from other machines; set \
                         --api-token so only clients with the token get in, or bind to 127.0.0.1"
                    );
                }
                Some(addr)
            }
        };
        let peers = self
            .peers
            .iter()
            .map(|p| {
                p.parse::<Multiaddr>().with_context(|| {
                    format!("--peer {p} is not a multiaddr like /ip4/192.168.1.20/tcp/4318")
                })
            })
            .collect::<Result<_>>()?;
        let positive = |v: Option<u32>, default: u32, what: &str| -> Result<usize> {
            match v.unwrap_or(default) {
                0 => bail!("{what} must be at least 1"),
                n => Ok(n as usize),
            }
        };
        let size = |v: Option<&str>, what: &str| -> Result<Option<u64>> {
            v.map(crate::memory::parse_size)
                .transpose()
                .map_err(|e| anyhow::anyhow!("{what}: {e}"))
        };
        let log_format = match self.log_format.as_deref().unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("--log-format {other}: use text or json"),
        };
        Ok(NodeConfig {
            name: self
                .name
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(crate::devices::host_name),
            listen,
            api,
            api_token,
            ollama_api,
            peers,
            mdns: self.mdns.unwrap_or(true),
            max_jobs: positive(self.max_jobs, 4, "--max-jobs")?,
            max_queue: positive(self.max_queue, 16, "--max-queue")?,
            threads: self.threads.map(|t| t.max(1) as usize),
            ctx: positive(self.ctx, 4096, "--ctx")?.max(16),
            max_memory: size(self.max_memory.as_deref(), "--max-memory")?,
            cache_size: size(self.cache_size.as_deref(), "--cache-size")?,
            kv_memory: size(self.kv_memory.as_deref(), "--kv-memory")?,
            device: match self.device.as_deref() {
                None | Some("") => DeviceChoice::Auto,
                Some(d) => d.parse().map_err(|e| anyhow::anyhow!("--device: {e}"))?,
            },
            gpu_memory: size(self.gpu_memory.as_deref(), "--gpu-memory")?,
            pull_when_faster: self.pull_when_faster.unwrap_or(false),
            load: self.load,
            grace: std::time::Duration::from_secs(self.grace.unwrap_or(5)),
            queue_timeout: std::time::Duration::from_secs(positive(
                self.queue_timeout
                    .map(|t| t.min(u64::from(u32::MAX)) as u32),
                60,
                "--queue-timeout",
            )? as u64),
            log_format,
            sampling: {
                let s = self.sampling.unwrap_or_default();
                SamplingParams::check(&s).context("the config's [sampling] table")?;
                s
            },
        })
    }
}

/// Where the config file is: `explicit`, else `<data-dir>/config.toml`.
pub fn config_path(explicit: Option<&Path>, data_dir: &Path) -> (PathBuf, bool) {
    match explicit {
        Some(p) => (p.to_owned(), true),
        None => (data_dir.join("config.toml"), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: Settings = toml::from_str(
            "name = \"kitchen\"\nmax_jobs = 3\npeers = [\"/ip4/10.0.0.2/tcp/4318\"]\nmdns = false\n",
        )
        .unwrap();
        let flags = Settings {
            name: Some("den".into()),
            ..Settings::default()
        };
        let c = flags.or(file).resolve().unwrap();
        assert_eq!(c.name, "den");
        assert_eq!(c.max_jobs, 3);
        assert!(!c.mdns);
        assert_eq!(c.peers.len(), 1);
        assert_eq!(c.max_queue, 16);
        assert_eq!(c.api.to_string(), "127.0.0.1:4317");
    }

    #[test]
    fn mistakes_are_explained() {
        let err = |toml_text: &str| {
            let s: Result<Settings, _> = toml::from_str(toml_text);
            match s {
                Err(e) => e.to_string(),
                Ok(s) => format!("{:#}", s.resolve().unwrap_err()),
            }
        };
        assert!(err("colour = 1").contains("unknown field"));
        assert!(err("api = \"0.0.0.0:80\"").contains("--api-token"));
        assert!(err("listen = \"4318\"").contains("not a multiaddr"));
        assert!(err("max_jobs = 0").contains("at least 1"));
        assert!(err("log_format = \"xml\"").contains("text or json"));
        assert!(err("device = \"tpu\"").contains("auto, cpu, gpu or gpu:N"));
        assert!(err("device = \"gpu:x\"").contains("auto, cpu, gpu or gpu:N"));
        let gpu: Settings = toml::from_str("device = \"gpu:1\"\ngpu_memory = \"6GB\"").unwrap();
        let c = gpu.resolve().unwrap();
        assert_eq!(c.device, DeviceChoice::Gpu(Some(1)));
        assert_eq!(c.gpu_memory, Some(6_000_000_000));
        let ok: Settings = toml::from_str("api = \"0.0.0.0:80\"\napi_token = \"s3cret\"").unwrap();
        assert!(ok.resolve().is_ok());
        assert!(err("[sampling]\nmin_p = 2.0").contains("min-p"));
        assert!(err("[sampling]\nheat = 1").contains("unknown field"));
    }

    #[test]
    fn the_sampling_table_sets_this_nodes_defaults() {
        let file: Settings =
            toml::from_str("[sampling]\ntemperature = 0.5\nrepeat_last_n = 32\n").unwrap();
        let c = Settings::default().or(file).resolve().unwrap();
        assert_eq!(c.sampling.temperature, Some(0.5));
        assert_eq!(c.sampling.repeat_last_n, Some(32));
        assert_eq!(c.sampling.min_p, None);
        assert_eq!(
            Settings::default().resolve().unwrap().sampling,
            Default::default()
        );
    }
}
