//! The GPU backend: a stage's layers (and its embedding and head) run as WGSL compute shaders
//! through wgpu — Vulkan, Metal or DX12, whatever the machine has, with no vendor toolkit at
//! build time. Weights are uploaded once in their GGUF block formats and dequantised inside the
//! shaders; keys and values are kept as f16 on the device; only logits (or a stage's hidden
//! states) come back.
//!
//! - [`device`]: the adapters wgpu sees and the choice among them (`auto`, `cpu`, `gpu[:N]`).
//! - [`kernels`]: the shaders and their pipelines.
//! - [`part`]: a layer range on the device, its per-session caches, and one step through it.
//! - [`plan`]: how many layers fit in the device's memory (pure).
//! - [`single`]: kernels run alone, for the checks against the CPU code they mirror.

pub mod device;
mod kernels;
pub(crate) mod part;
pub mod plan;
pub mod single;

pub use device::{adapters, AdapterInfo, DeviceChoice, Gpu};
pub use kernels::FORMATS;
