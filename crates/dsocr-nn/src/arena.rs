//! Host memory for weights the CPU kernels stream: 2 MiB-aligned regions advised for
//! transparent huge pages.
//!
//! A decode step streams ~0.6–1.1 GB of weights scattered over 64 experts per layer. With
//! 4 KiB pages every page is a TLB miss whose page-table walk itself misses the cache (the
//! other weights evicted it): measured on the 2-core development VM, the q8 step took 65 ms
//! with 4 KiB pages and 38 ms with huge pages (docs/performance.md, "Quantized weights and bf16
//! on the CPU"). Linux's default transparent-huge-page mode is `madvise`, so the memory has to
//! ask for them: weights are carved out of 64 MiB chunks mapped with `mmap` and advised with
//! `MADV_HUGEPAGE` before they are first written (the pages are then faulted in as huge
//! pages). Larger weights get a region of their own. Elsewhere (other systems, or when the
//! kernel refuses the advice) the memory is ordinary zeroed memory: only slower.
//!
//! A chunk lives as long as any weight in it ([`Arc`]); the allocator itself keeps only a
//! [`Weak`] reference to the chunk it is filling, so dropping a model frees its memory.

use std::sync::{Arc, Mutex, Weak};

/// Size of the shared chunks weights are carved from.
const CHUNK_BYTES: usize = 64 << 20;

/// Alignment of the regions (one transparent huge page on x86-64 and most aarch64 kernels).
const HUGE_PAGE: usize = 2 << 20;

/// Alignment of each weight inside a chunk (a cache line; f32 scales need 4).
const ALIGN: usize = 64;

/// A zero-initialised, huge-page-advised memory region.
#[derive(Debug)]
struct Region {
    ptr: *mut u8,
    len: usize,
    #[cfg(target_os = "linux")]
    mapping: (*mut libc::c_void, usize),
    #[cfg(not(target_os = "linux"))]
    layout: std::alloc::Layout,
}

// SAFETY: the region is plain memory; access is coordinated by `HostBytes` (disjoint slices).
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    /// `len` zero bytes aligned to [`HUGE_PAGE`]; `None` if the system has no memory.
    fn new(len: usize) -> Option<Region> {
        let len = len.max(1).next_multiple_of(HUGE_PAGE);
        #[cfg(target_os = "linux")]
        {
            // Over-allocate by one huge page to align by hand; the mapping is zero-filled.
            let total = len + HUGE_PAGE;
            // SAFETY: an anonymous private mapping with no address hint; checked below.
            let base = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    total,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if base == libc::MAP_FAILED {
                return None;
            }
            let offset = (base as usize).next_multiple_of(HUGE_PAGE) - base as usize;
            // SAFETY: `offset + len <= total`, inside the mapping.
            let ptr = unsafe { (base as *mut u8).add(offset) };
            // Advice only: a kernel without transparent huge pages refuses it and the region
            // stays in small pages.
            // SAFETY: the range lies inside the mapping made above.
            let _ = unsafe { libc::madvise(ptr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
            Some(Region { ptr, len, mapping: (base, total) })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let layout = std::alloc::Layout::from_size_align(len, HUGE_PAGE).ok()?;
            // SAFETY: the layout has a non-zero size.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            (!ptr.is_null()).then_some(Region { ptr, len, layout })
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe {
            libc::munmap(self.mapping.0, self.mapping.1);
        }
        #[cfg(not(target_os = "linux"))]
        // SAFETY: allocated in `new` with this layout.
        unsafe {
            std::alloc::dealloc(self.ptr, self.layout)
        }
    }
}

/// A chunk being filled: the weak reference the allocator keeps and its first free byte.
static FILLING: Mutex<Option<(Weak<Region>, usize)>> = Mutex::new(None);

/// `len` bytes of weight memory, zeroed, exclusively this value's (module docs).
#[derive(Debug)]
pub struct HostBytes {
    region: Arc<Region>,
    offset: usize,
    len: usize,
}

impl HostBytes {
    /// Zeroed bytes in a huge-page-advised region (module docs).
    ///
    /// Panics only if the system cannot map memory at all, as a `Vec` would.
    pub fn zeroed(len: usize) -> HostBytes {
        if len > CHUNK_BYTES / 4 {
            let region = Region::new(len).unwrap_or_else(|| std::alloc::handle_alloc_error(layout_of(len)));
            return HostBytes { region: Arc::new(region), offset: 0, len };
        }
        let mut filling = FILLING.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((weak, used)) = filling.as_mut() {
            if let Some(region) = weak.upgrade() {
                let offset = used.next_multiple_of(ALIGN);
                if offset + len <= region.len {
                    *used = offset + len;
                    return HostBytes { region, offset, len };
                }
            }
        }
        let region = Arc::new(
            Region::new(CHUNK_BYTES).unwrap_or_else(|| std::alloc::handle_alloc_error(layout_of(CHUNK_BYTES))),
        );
        *filling = Some((Arc::downgrade(&region), len));
        HostBytes { region, offset: 0, len }
    }

    /// Zeroed room for `n` f32 values.
    pub fn zeroed_f32(n: usize) -> HostBytes {
        Self::zeroed(n * 4)
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `offset + len` lies inside the region, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.region.ptr.add(self.offset), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as `as_slice`; no other `HostBytes` covers these bytes (each allocation is
        // handed out once and `HostBytes` is not `Clone`), and `&mut self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.region.ptr.add(self.offset), self.len) }
    }

    /// The bytes as f32 values (allocations are 64-byte aligned).
    pub fn as_f32(&self) -> &[f32] {
        bytemuck::cast_slice(&self.as_slice()[..self.len / 4 * 4])
    }

    pub fn as_mut_f32(&mut self) -> &mut [f32] {
        let n = self.len / 4 * 4;
        bytemuck::cast_slice_mut(&mut self.as_mut_slice()[..n])
    }

    /// The bytes as u16 values (bf16 bit patterns).
    pub fn as_u16(&self) -> &[u16] {
        bytemuck::cast_slice(&self.as_slice()[..self.len / 2 * 2])
    }

    pub fn as_mut_u16(&mut self) -> &mut [u16] {
        let n = self.len / 2 * 2;
        bytemuck::cast_slice_mut(&mut self.as_mut_slice()[..n])
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn layout_of(len: usize) -> std::alloc::Layout {
    std::alloc::Layout::from_size_align(len.max(1), HUGE_PAGE).unwrap_or(std::alloc::Layout::new::<u8>())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocations are zeroed, aligned, disjoint, share chunks, and large ones get their own.
    #[test]
    fn allocations_are_zeroed_aligned_and_disjoint() {
        let mut a = HostBytes::zeroed(1000);
        let mut b = HostBytes::zeroed_f32(300);
        assert!(a.as_slice().iter().all(|&x| x == 0) && b.as_f32().iter().all(|&x| x == 0.0));
        assert_eq!(a.as_slice().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_slice().as_ptr() as usize % ALIGN, 0);
        a.as_mut_slice().fill(7);
        b.as_mut_f32().fill(1.5);
        assert!(a.as_slice().iter().all(|&x| x == 7), "b's writes did not reach a");
        assert_eq!(b.as_f32().len(), 300);
        let big = HostBytes::zeroed(CHUNK_BYTES);
        assert_eq!(big.as_slice().as_ptr() as usize % HUGE_PAGE, 0);
        assert_eq!(big.len(), CHUNK_BYTES);
        // Freed with the last value of its chunk: a new allocation after dropping everything
        // still works.
        drop((a, b, big));
        assert_eq!(HostBytes::zeroed(10).len(), 10);
    }
}
