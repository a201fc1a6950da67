//! How much of a stage goes on the GPU: all of it when it fits the device's memory, otherwise
//! the head and as many of the last layers as fit (the rest run on the CPU, in the same
//! process). Pure: sizes in, a layer count out.

/// What a stage would put on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    /// Weight bytes of each layer, in order.
    pub layers: Vec<u64>,
    /// Bytes of the head (output norm and matrix), 0 for a stage that does not end the model.
    pub head: u64,
    /// Bytes of the embedding table when the whole stage would be on the device and it starts
    /// the model (0 when tied to the head, which holds it already).
    pub embedding: u64,
    /// Keys and values to keep room for, per layer (the sessions the node expects).
    pub cache_per_layer: u64,
    /// Activation buffers and other fixed costs.
    pub fixed: u64,
}

/// How many of the stage's last layers go on the device when it has `memory` bytes (`None`:
/// not known, so everything is tried). `Some(0)` with a head that fits means only the head.
/// `None` in the result: not even the head fits, so the stage stays on the CPU.
pub fn gpu_layers(sizes: &Sizes, memory: Option<u64>) -> Option<usize> {
    let n = sizes.layers.len();
    let Some(memory) = memory else {
        return Some(n);
    };
    let per_layer = |k: usize| -> u64 {
        sizes.layers[n - k..].iter().sum::<u64>() + k as u64 * sizes.cache_per_layer
    };
    let base = sizes.head + sizes.fixed;
    if base + per_layer(n) + sizes.embedding <= memory {
        return Some(n);
    }
    if base > memory {
        return None;
    }
    // The whole stage does not fit; the embedding then stays on the CPU with the first layers.
    (0..n).rev().find(|&k| base + per_layer(k) <= memory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sizes() -> Sizes {
        Sizes {
            layers: vec![10; 8],
            head: 30,
            embedding: 20,
            cache_per_layer: 2,
            fixed: 5,
        }
    }

    #[test]
    fn everything_when_it_fits_or_memory_is_unknown() {
        // 8 * 12 + 30 + 20 + 5 = 151
        assert_eq!(gpu_layers(&sizes(), Some(151)), Some(8));
        assert_eq!(gpu_layers(&sizes(), None), Some(8));
    }

    #[test]
    fn the_last_layers_that_fit_beside_the_head() {
        // Without the embedding: 35 + 12k <= 150 -> k = 9 > 8, but all 8 plus the embedding
        // (151) do not fit, so the stage splits: 7 layers (35 + 84 = 119 <= 150).
        assert_eq!(gpu_layers(&sizes(), Some(150)), Some(7));
        assert_eq!(gpu_layers(&sizes(), Some(35 + 12 * 3)), Some(3));
        assert_eq!(gpu_layers(&sizes(), Some(35 + 11)), Some(0));
    }

    #[test]
    fn nothing_when_the_head_does_not_fit() {
        assert_eq!(gpu_layers(&sizes(), Some(34)), None);
    }
}
