//! The adapters wgpu sees, and opening one of them for compute.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::kernels::Kernels;

/// One adapter as wgpu reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterInfo {
    /// Position in [`adapters`]' list: what `gpu:N` names.
    pub index: usize,
    pub name: String,
    /// `vulkan`, `metal`, `dx12`.
    pub backend: String,
    /// `NVIDIA`, `AMD`, `Intel`, `Apple`, `Mesa` or the PCI vendor id in hex.
    pub vendor: String,
    /// `discrete`, `integrated`, `virtual`, `cpu` (a software rasteriser such as lavapipe) or
    /// `other`.
    pub kind: String,
    pub driver: String,
}

impl AdapterInfo {
    fn of(index: usize, info: &wgpu::AdapterInfo) -> Self {
        let vendor = match info.vendor {
            0x10de => "NVIDIA".to_owned(),
            0x1002 | 0x1022 => "AMD".to_owned(),
            0x8086 => "Intel".to_owned(),
            0x106b => "Apple".to_owned(),
            0x10005 => "Mesa".to_owned(),
            other => format!("{other:#x}"),
        };
        let kind = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => "discrete",
            wgpu::DeviceType::IntegratedGpu => "integrated",
            wgpu::DeviceType::VirtualGpu => "virtual",
            wgpu::DeviceType::Cpu => "cpu",
            wgpu::DeviceType::Other => "other",
        };
        let driver = [info.driver.as_str(), info.driver_info.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        AdapterInfo {
            index,
            name: info.name.clone(),
            backend: info.backend.to_str().to_owned(),
            vendor,
            kind: kind.to_owned(),
            driver,
        }
    }

    /// Preference among adapters for `gpu` without an index: discrete first, software last.
    fn rank(&self) -> u8 {
        match self.kind.as_str() {
            "discrete" => 0,
            "integrated" => 1,
            "virtual" => 2,
            "other" => 3,
            _ => 4,
        }
    }
}

impl fmt::Display for AdapterInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gpu:{} {} ({}, {}, {})",
            self.index, self.name, self.vendor, self.backend, self.kind
        )
    }
}

/// Which device a node runs its models on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// A discrete GPU when there is one, the CPU otherwise.
    #[default]
    Auto,
    Cpu,
    /// The best adapter (`None`: discrete before integrated before software) or adapter N.
    Gpu(Option<usize>),
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "gpu" => Ok(DeviceChoice::Gpu(None)),
            other => other
                .strip_prefix("gpu:")
                .and_then(|n| n.parse().ok())
                .map(|n| DeviceChoice::Gpu(Some(n)))
                .ok_or_else(|| {
                    Error::BadParameter(format!(
                        "device `{other}`: use auto, cpu, gpu or gpu:N (N from `hearth devices`)"
                    ))
                }),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => f.write_str("auto"),
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Gpu(None) => f.write_str("gpu"),
            DeviceChoice::Gpu(Some(n)) => write!(f, "gpu:{n}"),
        }
    }
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY;
    wgpu::Instance::new(desc)
}

/// The adapters in a stable order (what `gpu:N` names must not change between two runs), each
/// with what it reports.
fn enumerate(instance: &wgpu::Instance) -> Vec<(wgpu::Adapter, AdapterInfo)> {
    let mut adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    adapters.sort_by_key(|a| {
        let i = a.get_info();
        (i.backend as u8, i.name.clone(), i.device_pci_bus_id.clone())
    });
    adapters
        .into_iter()
        .enumerate()
        .map(|(i, a)| {
            let info = AdapterInfo::of(i, &a.get_info());
            (a, info)
        })
        .collect()
}

/// Every adapter wgpu sees (none on a machine without a Vulkan, Metal or DX12 driver).
pub fn adapters() -> Vec<AdapterInfo> {
    enumerate(&instance())
        .into_iter()
        .map(|(_, info)| info)
        .collect()
}

/// An opened adapter, ready to run stages.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) kernels: Kernels,
    info: AdapterInfo,
}

impl fmt::Debug for Gpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Gpu({})", self.info)
    }
}

impl Gpu {
    /// Opens the adapter `choice` names: `Ok(None)` means the CPU (`cpu`, or `auto` without a
    /// discrete GPU); `gpu` without any adapter is an error that says what to install.
    pub fn open(choice: DeviceChoice) -> Result<Option<Arc<Gpu>>> {
        if choice == DeviceChoice::Cpu {
            return Ok(None);
        }
        let instance = instance();
        let adapters = enumerate(&instance);
        let infos: Vec<&AdapterInfo> = adapters.iter().map(|(_, info)| info).collect();
        let pick = match choice {
            DeviceChoice::Cpu => unreachable!("returned above"),
            DeviceChoice::Auto => match infos.iter().find(|i| i.kind == "discrete") {
                Some(i) => i.index,
                None => return Ok(None),
            },
            DeviceChoice::Gpu(None) => match infos.iter().min_by_key(|i| (i.rank(), i.index)) {
                Some(i) => i.index,
                None => {
                    return Err(Error::Gpu(
                        "no GPU adapter found (wgpu sees no Vulkan, Metal or DX12 device); \
                         install the GPU's Vulkan driver (Debian: mesa-vulkan-drivers for AMD, \
                         Intel and software rendering; NVIDIA's driver for NVIDIA) or run with \
                         --device cpu"
                            .into(),
                    ))
                }
            },
            DeviceChoice::Gpu(Some(n)) => {
                if n >= infos.len() {
                    let seen = if infos.is_empty() {
                        "none".to_owned()
                    } else {
                        infos
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    return Err(Error::Gpu(format!(
                        "there is no gpu:{n}; adapters: {seen} (`hearth devices` lists them)"
                    )));
                }
                n
            }
        };
        let (adapter, info) = &adapters[pick];
        Self::from_adapter(adapter, info.clone()).map(|g| Some(Arc::new(g)))
    }

    fn from_adapter(adapter: &wgpu::Adapter, info: AdapterInfo) -> Result<Self> {
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("hearth"),
            required_features: wgpu::Features::empty(),
            // Everything the adapter allows: a large model's head is more than the default
            // 128 MiB binding.
            required_limits: limits,
            experimental_features: wgpu::ExperimentalFeatures::default(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::default(),
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Gpu(format!("{info}: cannot open the device: {e}")))?;
        // Errors are caught in scopes around each load and step; one that escapes them is
        // logged, not a panic of the node.
        device.on_uncaptured_error(Arc::new(|e| eprintln!("hearth: GPU error: {e}")));
        let kernels = Kernels::new(&device, info.kind == "cpu");
        Ok(Gpu {
            device,
            queue,
            kernels,
            info,
        })
    }

    /// The adapter this is.
    pub fn info(&self) -> &AdapterInfo {
        &self.info
    }

    /// Largest single buffer the device takes.
    pub(crate) fn max_buffer(&self) -> u64 {
        let l = self.device.limits();
        l.max_buffer_size.min(l.max_storage_buffer_binding_size)
    }

    /// Runs `f`, turning any validation or out-of-memory error it raised into an error.
    pub(crate) fn checked<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        match invalid.or(oom) {
            None => Ok(out),
            Some(e) => Err(Error::Gpu(format!("{}: {what}: {e}", self.info))),
        }
    }
}
