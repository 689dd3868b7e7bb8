//! Per-layer key/value cache (post-RoPE K and V, `[batch, heads, capacity, head_dim]`).
//!
//! Buffers are preallocated and grown in chunks of `chunk` positions (256 by default, vLLM's
//! block size), so the whole cache is copied only when a chunk boundary is crossed, never per
//! step. New positions are written by moving the buffer out of its slot (`Option::take`, the
//! `mem::replace` pattern) and `slice_assign`-ing into it, which reuses the buffer when nothing
//! else holds it (burn-notes §5: `cache.clone().slice_assign` would copy the whole cache every
//! step).

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

/// Default growth step, in positions.
pub const DEFAULT_CHUNK: usize = 256;

#[derive(Debug, Clone, Default)]
struct LayerCache {
    k: Option<Tensor<4>>,
    v: Option<Tensor<4>>,
}

#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
    chunk: usize,
    /// `0..capacity` on the device, made once per capacity (for the decode mask).
    positions: Option<Tensor<1, Int>>,
    /// The decode mask of the current step: (valid length, capacity, `[1, 1, 1, capacity]`).
    mask: Option<(usize, usize, Tensor<4, Bool>)>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers that grows by `chunk` positions (min 1).
    pub fn new(num_layers: usize, chunk: usize) -> Self {
        Self {
            layers: vec![LayerCache::default(); num_layers],
            len: 0,
            chunk: chunk.max(1),
            positions: None,
            mask: None,
        }
    }

    /// Number of cached positions (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Allocated positions (0 before the first write).
    pub fn capacity(&self) -> usize {
        self.layers.first().and_then(|l| l.k.as_ref()).map_or(0, |k| k.dims()[2])
    }

    pub fn chunk(&self) -> usize {
        self.chunk
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Forgets the cached positions but keeps the buffers for reuse.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Writes `k`, `v` `[batch, heads, t, head_dim]` of layer `layer` at positions
    /// `len..len + t` and returns views of positions `0..len + t`. The cache length itself is
    /// advanced by [`advance`](Self::advance) once every layer has written.
    pub(crate) fn append(&mut self, layer: usize, k: Tensor<4>, v: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
        let [b, h, t, d] = k.dims();
        let (start, end) = (self.len, self.len + t);
        let chunk = self.chunk;
        let entry = &mut self.layers[layer];
        let k_all = write(&mut entry.k, k, start, end, chunk);
        let v_all = write(&mut entry.v, v, start, end, chunk);
        debug_assert_eq!(k_all.dims(), [b, h, end, d]);
        (k_all, v_all)
    }

    /// Like [`append`](Self::append), but returns the whole buffers `[batch, heads, capacity,
    /// head_dim]` and a mask `[1, 1, 1, capacity]` that is `true` at the positions not written
    /// yet (`len + t..capacity`).
    ///
    /// Used by decode steps: every step of a chunk then has the same shapes, so the GPU
    /// backends reuse their compiled and fused kernels instead of building new ones for each
    /// context length, and no strided view of the cache reaches the attention.
    pub(crate) fn append_padded(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
    ) -> (Tensor<4>, Tensor<4>, Tensor<4, Bool>) {
        let t = k.dims()[2];
        let (start, end) = (self.len, self.len + t);
        let chunk = self.chunk;
        let entry = &mut self.layers[layer];
        write(&mut entry.k, k, start, end, chunk);
        write(&mut entry.v, v, start, end, chunk);
        let (k_all, v_all) = match (&entry.k, &entry.v) {
            (Some(k), Some(v)) => (k.clone(), v.clone()),
            _ => unreachable!("write always leaves a buffer"),
        };
        let mask = self.mask(end, k_all.dims()[2], &k_all.device());
        (k_all, v_all, mask)
    }

    /// Grows every written buffer to hold `positions` positions (to the next multiple of
    /// `chunk`; one copy of the content), for decode steps that write at a device position
    /// ([`write_at`](Self::write_at)), which cannot grow the buffers themselves.
    pub(crate) fn reserve(&mut self, positions: usize, chunk: usize) {
        for entry in &mut self.layers {
            for buf in [&mut entry.k, &mut entry.v] {
                if let Some(old) = buf.take() {
                    let like = old.clone();
                    *buf = Some(grown(Some(old), positions, chunk.max(1), &like));
                }
            }
        }
        self.mask = None;
    }

    /// Writes `k`, `v` `[1, heads, 1, head_dim]` of layer `layer` at the position held by the
    /// device tensor `position` `[1]` (in place: the buffer is moved out of its slot, so
    /// `select_assign` owns it) and returns the whole buffers `[1, heads, capacity, head_dim]`.
    /// The position must be below [`capacity`](Self::capacity) ([`reserve`](Self::reserve));
    /// the cache length is not advanced (the caller tracks it, [`set_len`](Self::set_len)).
    pub(crate) fn write_at(
        &mut self,
        layer: usize,
        k: Tensor<4>,
        v: Tensor<4>,
        position: &Tensor<1, Int>,
    ) -> (Tensor<4>, Tensor<4>) {
        let chunk = self.chunk;
        let entry = &mut self.layers[layer];
        let write = |buf: &mut Option<Tensor<4>>, new: Tensor<4>| {
            let cache = grown(buf.take(), 1, chunk, &new);
            let dtype = cache.dtype();
            let written = cache.select_assign(2, position.clone(), new.cast(dtype), IndexingUpdateOp::Assign);
            *buf = Some(written.clone());
            written
        };
        let k_all = write(&mut entry.k, k);
        let v_all = write(&mut entry.v, v);
        (k_all, v_all)
    }

    /// Sets the number of cached positions (after [`write_at`](Self::write_at) steps).
    pub(crate) fn set_len(&mut self, len: usize) {
        self.len = len;
    }

    /// `positions >= valid` as `[1, 1, 1, capacity]`, shared by all layers of a step.
    fn mask(&mut self, valid: usize, capacity: usize, device: &Device) -> Tensor<4, Bool> {
        if let Some((v, c, mask)) = &self.mask {
            if (*v, *c) == (valid, capacity) {
                return mask.clone();
            }
        }
        let positions = match &self.positions {
            Some(p) if p.dims()[0] == capacity => p.clone(),
            _ => {
                let p = Tensor::<1, Int>::arange(0..capacity as i64, device);
                self.positions = Some(p.clone());
                p
            }
        };
        let mask = positions.greater_equal_elem(valid as i64).reshape([1, 1, 1, capacity]);
        self.mask = Some((valid, capacity, mask.clone()));
        mask
    }

    /// Layer `layer`'s K and V buffers `[batch, heads, capacity, head_dim]` (positions
    /// `0..len` hold data), if written.
    pub(crate) fn layer_buffers(&self, layer: usize) -> Option<(&Tensor<4>, &Tensor<4>)> {
        let entry = self.layers.get(layer)?;
        Some((entry.k.as_ref()?, entry.v.as_ref()?))
    }

    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }
}

/// Grows `buf` to hold `end` positions if needed, writes `new` at `start..end` in place and
/// returns a view of `0..end`.
fn write(buf: &mut Option<Tensor<4>>, new: Tensor<4>, start: usize, end: usize, chunk: usize) -> Tensor<4> {
    let [b, h, _, d] = new.dims();
    // Moved out of the slot (not cloned), so the buffer is uniquely owned and `slice_assign`
    // writes into it instead of copying it.
    let cache = grown(buf.take(), end, chunk, &new);
    let cache = cache.slice_assign([0..b, 0..h, start..end, 0..d], new);
    let view = cache.clone().slice([0..b, 0..h, 0..end, 0..d]);
    *buf = Some(cache);
    view
}

/// `old` if it holds `end` positions, else a buffer of the next multiple of `chunk` positions
/// with `old`'s content (one copy per chunk boundary crossed), shaped like `like` (`[b, h, _, d]`).
fn grown(old: Option<Tensor<4>>, end: usize, chunk: usize, like: &Tensor<4>) -> Tensor<4> {
    match old {
        Some(old) if old.dims()[2] >= end => old,
        old => {
            let [b, h, _, d] = like.dims();
            let fresh = Tensor::<4>::zeros([b, h, end.div_ceil(chunk) * chunk, d], (&like.device(), like.dtype()));
            match old {
                Some(old) => {
                    let capacity = old.dims()[2];
                    fresh.slice_assign([0..b, 0..h, 0..capacity, 0..d], old)
                }
                None => fresh,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{DType, Distribution};
    use dsocr_weights::{Backend, Precision};

    use super::*;

    #[test]
    fn writes_in_place_and_grows_by_chunks() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let mut cache = KvCache::new(2, 4);
        let mut reference: Vec<Tensor<4>> = Vec::new();
        for (step, t) in [3usize, 1, 1, 5, 1].into_iter().enumerate() {
            let k = Tensor::<4>::random([1, 2, t, 8], Distribution::Normal(0.0, 1.0), &device);
            let v = k.clone() * 2.0;
            reference.push(k.clone());
            for layer in 0..2 {
                let (k_all, v_all) = cache.append(layer, k.clone(), v.clone());
                assert_eq!(k_all.dims(), [1, 2, cache.len() + t, 8]);
                // Views returned so far hold exactly what was appended, in order.
                let expected = Tensor::cat(reference.clone(), 2);
                let diff: f32 = (k_all - expected.clone()).abs().max().into_scalar();
                assert_eq!(diff, 0.0, "step {step}");
                let diff: f32 = (v_all - expected * 2.0).abs().max().into_scalar();
                assert_eq!(diff, 0.0, "step {step}");
            }
            cache.advance(t);
            assert_eq!(cache.capacity(), cache.len().div_ceil(4) * 4, "step {step}");
            // With the views dropped, every buffer is uniquely owned again, so the next
            // `slice_assign` writes in place instead of copying the cache (flex tracks this).
            for entry in &cache.layers {
                for buf in [&entry.k, &entry.v] {
                    let buf = buf.as_ref().unwrap();
                    assert!(buf.can_mut(), "step {step}: cache buffer is shared");
                    assert_eq!(buf.dtype(), DType::F32);
                }
            }
        }
        assert_eq!(cache.len(), 11);
        assert_eq!(cache.capacity(), 12);
    }

    /// Per-step append cost with a real-size cache (10 heads × 128, 8192 positions, f32):
    /// microseconds when written in place, milliseconds if the cache were copied.
    #[test]
    #[ignore]
    fn append_cost_real_size() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let mut cache = KvCache::new(1, 8192);
        let k = Tensor::<4>::random([1, 10, 1, 128], Distribution::Normal(0.0, 1.0), &device);
        let start = std::time::Instant::now();
        for _ in 0..1000 {
            let (k_all, _v_all) = cache.append(0, k.clone(), k.clone());
            drop(k_all);
            cache.advance(1);
        }
        println!("1000 appends into an 8192-position cache: {:?} per step", start.elapsed() / 1000);
    }
}
