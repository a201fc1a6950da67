//! The compute devices a node reports on its card: the CPU with its cores and free RAM, and NVIDIA
//! GPUs through NVML when the driver's library is present (it is loaded at run time, so nodes
//! without NVIDIA hardware need nothing).

use std::sync::OnceLock;

use hearth_protocol::{Device, DeviceKind};
use nvml_wrapper::Nvml;

/// This machine's devices, measured now.
pub fn probe() -> Vec<Device> {
    let mut devices = vec![cpu()];
    devices.extend(nvidia_gpus());
    devices
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
