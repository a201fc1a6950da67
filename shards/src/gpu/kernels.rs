//! The shaders (WGSL, in `shaders/`) and their compute pipelines. Every kernel takes its
//! parameters at binding 0 from a slot of one uniform buffer (a dynamic offset per dispatch),
//! so a whole step is recorded against bind groups made once, with one parameter upload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// Block formats the shaders read.
pub const FORMATS: [GgmlType; 7] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q8_0,
    GgmlType::Q4K,
    GgmlType::Q6K,
];

const BLOCKS: &str = include_str!("shaders/blocks.wgsl");

/// How to read the format: `head` (a group's scales and where its quants are) and `load4`.
fn format_source(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::F32 => include_str!("shaders/f32.wgsl"),
        GgmlType::F16 => include_str!("shaders/f16.wgsl"),
        GgmlType::Q4_1 => include_str!("shaders/q4_1.wgsl"),
        GgmlType::Q5_0 => include_str!("shaders/q5_0.wgsl"),
        GgmlType::Q8_0 => include_str!("shaders/q8_0.wgsl"),
        GgmlType::Q4K => include_str!("shaders/q4_k.wgsl"),
        GgmlType::Q6K => include_str!("shaders/q6_k.wgsl"),
        _ => return None,
    })
}

/// Bytes of one parameter block (each kernel's `struct P` is at most eight words).
pub(crate) const PARAMS: u64 = 32;

/// How a kernel uses each of its storage bindings.
#[derive(Clone, Copy)]
enum Access {
    Read,
    Write,
}

/// A compiled kernel and the layout its bind groups are made for.
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// Every kernel of a step; the per-format ones compiled when a model first needs them.
pub(crate) struct Kernels {
    pub rms_norm: Kernel,
    pub rms_norm_in_place: Kernel,
    pub rope: Kernel,
    pub kv_store: Kernel,
    pub attention: Kernel,
    pub gated: Kernel,
    pub add: Kernel,
    matmul: Mutex<HashMap<GgmlType, Arc<Kernel>>>,
    get_rows: Mutex<HashMap<GgmlType, Arc<Kernel>>>,
    /// Lanes of a workgroup that share one weight row in a product (see matmul.wgsl).
    pub lanes: u32,
}

fn kernel(
    device: &wgpu::Device,
    name: &str,
    source: &str,
    entry: &str,
    bindings: &[(u32, Access)],
    constants: &[(&str, f64)],
) -> Kernel {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let mut entries = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAMS),
        },
        count: None,
    }];
    entries.extend(
        bindings
            .iter()
            .map(|&(binding, access)| wgpu::BindGroupLayoutEntry {
                binding,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage {
                        read_only: matches!(access, Access::Read),
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            }),
    );
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(name),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // Every kernel writes workgroup memory before it reads it.
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    Kernel { pipeline, layout }
}

use Access::{Read, Write};

impl Kernels {
    /// The kernels for a device; `software`: an adapter that runs shaders on the CPU.
    pub(crate) fn new(device: &wgpu::Device, software: bool) -> Self {
        let norm = include_str!("shaders/rms_norm.wgsl");
        let elementwise = include_str!("shaders/elementwise.wgsl");
        Kernels {
            rms_norm: kernel(
                device,
                "rms_norm",
                norm,
                "main",
                &[(1, Read), (2, Read), (3, Write)],
                &[],
            ),
            rms_norm_in_place: kernel(
                device,
                "rms_norm_in_place",
                norm,
                "in_place",
                &[(2, Read), (3, Write)],
                &[],
            ),
            rope: kernel(
                device,
                "rope",
                include_str!("shaders/rope.wgsl"),
                "main",
                &[(1, Read), (2, Write)],
                &[],
            ),
            kv_store: kernel(
                device,
                "kv_store",
                include_str!("shaders/kv_store.wgsl"),
                "main",
                &[(1, Read), (2, Read), (3, Read), (4, Write), (5, Write)],
                &[],
            ),
            attention: kernel(
                device,
                "attention",
                include_str!("shaders/attention.wgsl"),
                "main",
                &[
                    (1, Read),
                    (2, Read),
                    (3, Read),
                    (4, Read),
                    (5, Write),
                    (6, Write),
                ],
                &[],
            ),
            gated: kernel(
                device,
                "gated",
                elementwise,
                "gated",
                &[(1, Read), (2, Write)],
                &[],
            ),
            add: kernel(
                device,
                "add",
                elementwise,
                "add",
                &[(1, Read), (2, Write)],
                &[],
            ),
            matmul: Mutex::default(),
            get_rows: Mutex::default(),
            lanes: if software { 1 } else { 32 },
        }
    }

    /// The matrix product for weights of type `ty`.
    pub(crate) fn matmul(&self, device: &wgpu::Device, ty: GgmlType) -> Result<Arc<Kernel>> {
        let body = include_str!("shaders/matmul.wgsl");
        let lanes = [("LANES", f64::from(self.lanes))];
        Self::per_format(&self.matmul, device, ty, "matmul", body, &lanes)
    }

    /// The embedding lookup for a table of type `ty`.
    pub(crate) fn get_rows(&self, device: &wgpu::Device, ty: GgmlType) -> Result<Arc<Kernel>> {
        Self::per_format(
            &self.get_rows,
            device,
            ty,
            "get_rows",
            include_str!("shaders/get_rows.wgsl"),
            &[],
        )
    }

    fn per_format(
        cache: &Mutex<HashMap<GgmlType, Arc<Kernel>>>,
        device: &wgpu::Device,
        ty: GgmlType,
        name: &str,
        body: &str,
        constants: &[(&str, f64)],
    ) -> Result<Arc<Kernel>> {
        let mut cache = cache.lock().expect("kernel cache");
        if let Some(k) = cache.get(&ty) {
            return Ok(k.clone());
        }
        let format = format_source(ty).ok_or_else(|| {
            let have: Vec<String> = FORMATS.iter().map(ToString::to_string).collect();
            Error::Gpu(format!(
                "no shader reads {ty} weights (the GPU reads {})",
                have.join(", ")
            ))
        })?;
        let source = format!("{body}\n{BLOCKS}\n{format}");
        let k = Arc::new(kernel(
            device,
            &format!("{name}_{ty}"),
            &source,
            "main",
            &[(1, Read), (2, Read), (3, Write)],
            constants,
        ));
        cache.insert(ty, k.clone());
        Ok(k)
    }
}
