//! The compute devices a node reports on its card — the CPU with its cores and free RAM, every
//! GPU adapter wgpu sees (Vulkan, Metal, DX12), with memory from NVML for NVIDIA cards when the
//! driver's library is present (loaded at run time, so nodes without NVIDIA hardware need
//! nothing) — and the GPU `--device` chose for running models.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use hearth_protocol::{Device, DeviceKind, GpuAdapter};
use hearth_shards::gpu::{AdapterInfo, DeviceChoice, Gpu};
use hearth_shards::{Model, Stage};
use nvml_wrapper::Nvml;

/// This machine's devices, measured now.
pub fn probe() -> Vec<Device> {
    let mut devices = vec![cpu()];
    let mut nvidia = nvidia_gpus();
    for a in adapters() {
        // NVML knows an NVIDIA card's memory; wgpu does not report memory.
        let (total, free) = nvml_twin(a, &nvidia)
            .map(|i| nvidia.remove(i))
            .map_or((0, 0), |d| (d.total_memory, d.free_memory));
        devices.push(Device {
            kind: DeviceKind::Gpu,
            name: a.name.clone(),
            total_memory: total,
            free_memory: free,
            cores: None,
            adapter: Some(GpuAdapter {
                index: a.index as u32,
                backend: a.backend.clone(),
                vendor: a.vendor.clone(),
                kind: a.kind.clone(),
            }),
        });
    }
    devices.extend(nvidia);
    devices
}

/// Where NVML lists `adapter`, when it is an NVIDIA card NVML sees (it knows the memory).
fn nvml_twin(adapter: &AdapterInfo, nvidia: &[Device]) -> Option<usize> {
    if adapter.vendor != "NVIDIA" {
        return None;
    }
    nvidia.iter().position(|d| d.name == adapter.name)
}

/// The adapters wgpu sees, listed once: they do not change while the node runs.
pub fn adapters() -> &'static [AdapterInfo] {
    static ADAPTERS: OnceLock<Vec<AdapterInfo>> = OnceLock::new();
    ADAPTERS.get_or_init(hearth_shards::gpu::adapters)
}

/// Where a node runs its models: CPU threads, the GPU `--device` chose (none: the CPU only),
/// and the GPU memory they may take.
#[derive(Debug, Clone)]
pub struct Compute {
    threads: usize,
    gpu: Option<Arc<Gpu>>,
    memory: Option<u64>,
}

impl Compute {
    /// Opens the device `choice` names. `gpu` on a machine without a usable GPU is an error that
    /// says what to do; `auto` without a discrete GPU is the CPU.
    pub fn open(choice: DeviceChoice, memory: Option<u64>, threads: usize) -> anyhow::Result<Self> {
        let gpu = Gpu::open(choice).with_context(|| format!("--device {choice}"))?;
        // Memory NVML reports for the card, unless --gpu-memory says otherwise.
        let memory = memory.or_else(|| {
            let nvidia = nvidia_gpus();
            nvml_twin(gpu.as_ref()?.info(), &nvidia).map(|i| nvidia[i].total_memory)
        });
        Ok(Compute {
            threads,
            gpu,
            memory,
        })
    }

    /// The CPU only, with `threads` workers.
    pub fn cpu(threads: usize) -> Self {
        Compute {
            threads,
            gpu: None,
            memory: None,
        }
    }

    /// Opens the model at `path`, set to run on this node's GPU when it has one.
    pub fn open_model(&self, path: &std::path::Path) -> hearth_shards::Result<Model> {
        let model = Model::open(path, self.threads)?;
        Ok(match &self.gpu {
            Some(gpu) => model.on_gpu(gpu.clone(), self.memory),
            None => model,
        })
    }

    /// The GPU models run on.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        self.gpu.as_ref()
    }

    /// Loads `layers` of `model` (opened by [`Compute::open_model`]): on the GPU, or split between the
    /// GPU and the CPU when it does not fit; a GPU that fails to take it leaves it on the CPU,
    /// with a warning, rather than failing the request.
    pub fn stage(
        &self,
        model: &Model,
        layers: Range<usize>,
        name: &str,
    ) -> hearth_shards::Result<Stage> {
        match (model.stage(layers.clone()), model.gpu()) {
            (Ok(stage), _) => Ok(stage),
            (Err(e), Some(gpu)) => {
                tracing::warn!(
                    model = name,
                    gpu = %gpu.info(),
                    error = %e,
                    "the GPU cannot run this model; it runs on the CPU"
                );
                model.cpu_stage(layers)
            }
            (Err(e), None) => Err(e),
        }
    }
}

/// Where `stage` runs, for cards and logs: `cpu`, or `gpu:N name` and the layers there.
pub fn placement(digest: &str, stage: &Stage) -> hearth_protocol::ModelPlacement {
    let layers = stage.layers().len() as u32;
    match stage.gpu() {
        Some((info, on_gpu)) => hearth_protocol::ModelPlacement {
            digest: digest.to_owned(),
            device: format!("gpu:{} {}", info.index, info.name),
            gpu_layers: on_gpu.len() as u32,
            layers,
        },
        None => hearth_protocol::ModelPlacement {
            digest: digest.to_owned(),
            device: "cpu".to_owned(),
            gpu_layers: 0,
            layers,
        },
    }
}

/// "linux x86_64" and the like.
pub fn os() -> String {
    format!("{} {}", std::env::consts::OS, std::env::consts::ARCH)
}

/// The machine's host name, the default node name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "hearth".to_owned())
}

/// Bytes of memory available now (`MemAvailable`; 0 where unknown).
pub fn free_memory() -> u64 {
    cpu().free_memory
}

fn cpu() -> Device {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    // The model name does not change while the node runs; free memory does.
    static NAME: OnceLock<String> = OnceLock::new();
    let name = NAME.get_or_init(|| {
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
    });
    Device {
        kind: DeviceKind::Cpu,
        name: name.clone(),
        total_memory: kib("MemTotal:"),
        free_memory: kib("MemAvailable:"),
        cores: std::thread::available_parallelism()
            .ok()
            .map(|n| n.get() as u32),
        adapter: None,
    }
}

fn nvidia_gpus() -> Vec<Device> {
    static NVML: OnceLock<Option<Nvml>> = OnceLock::new();
    let Some(nvml) = NVML.get_or_init(|| Nvml::init().ok()) else {
        return Vec::new();
    };
    let count = nvml.device_count().unwrap_or(0);
    (0..count)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            let mem = d.memory_info().ok()?;
            Some(Device {
                kind: DeviceKind::Cuda,
                name: d.name().unwrap_or_else(|_| format!("NVIDIA GPU {i}")),
                total_memory: mem.total,
                free_memory: mem.free,
                cores: None,
                adapter: None,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_is_always_reported_with_memory_and_cores() {
        let d = probe();
        assert_eq!(d[0].kind, DeviceKind::Cpu);
        assert!(d[0].total_memory > 0 && d[0].free_memory <= d[0].total_memory);
        assert!(d[0].cores.unwrap() >= 1);
    }
}
