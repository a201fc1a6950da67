//! Per-session state of one stage: the key/value cache of its layers and the activation buffers
//! its forward pass reuses, so decoding a token allocates nothing. Keys and values are stored as
//! f16, as llama.cpp stores them by default: half the memory, and the same rounding.

use half::f16;
use half::vec::HalfBitsVecExt;

use crate::gpu::part::DeviceCache;
use crate::quant::QuantScratch;

/// Keys and values of one layer, `capacity` rows of `kv_dim` halves each.
pub(crate) struct LayerCache {
    pub k: Vec<f16>,
    pub v: Vec<f16>,
}

/// A session's cache for one stage.
pub struct KvCache {
    pub(crate) layers: Vec<LayerCache>,
    pub(crate) capacity: usize,
    pub(crate) len: usize,
    pub(crate) scratch: Scratch,
    /// The layers a GPU holds (see `gpu::part`), for a stage with a GPU part.
    pub(crate) device: Option<DeviceCache>,
}

impl KvCache {
    /// A cache for `layers` layers holding up to `capacity` positions. The memory is reserved
    /// zeroed up front; the OS backs pages only as positions are written.
    pub(crate) fn new(layers: usize, kv_dim: usize, capacity: usize) -> Self {
        // Zeroed through u16, which the allocator hands out as untouched zero pages (f16 has
        // no such fast path: filling it element by element would make the whole context
        // resident at once).
        let zeroed = || -> Vec<f16> { vec![0u16; capacity * kv_dim].reinterpret_into() };
        let layers = (0..layers)
            .map(|_| LayerCache {
                k: zeroed(),
                v: zeroed(),
            })
            .collect();
        KvCache {
            layers,
            capacity,
            len: 0,
            scratch: Scratch::default(),
            device: None,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on (keeps a shared prompt prefix).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Activation buffers, grown to the largest batch seen and then reused.
#[derive(Default)]
pub(crate) struct Scratch {
    pub x: Vec<f32>,
    pub xn: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub att: Vec<f32>,
    pub o: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub attn: crate::stage::AttnScratch,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    pub quant: QuantScratch,
}

/// Resizes `buf` to exactly `len` (reusing its allocation) and returns it.
pub(crate) fn sized(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    buf.resize(len, 0.0);
    &mut buf[..len]
}
