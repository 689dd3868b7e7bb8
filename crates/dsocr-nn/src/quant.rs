//! Weight-only quantization of `[out, in]` matrices, row by row in blocks of [`BLOCK`] values
//! along `in` (the layout of llama.cpp's `Q8_0` / `Q4_0`, with f32 scales):
//!
//! ```text
//! q8: d = max|w| / 127           q = round(w / d)          ∈ [-127, 127]   w ≈ q · d
//! q4: d = w_m / -8 (w_m: the value of largest magnitude, with its sign)
//!                                q = clamp(round(w / d) + 8, 0, 15)       w ≈ (q − 8) · d
//! ```
//!
//! A q4 block packs its 32 values in 16 bytes: byte `j` holds value `j` in its low nibble and
//! value `j + 16` in its high nibble. A row whose length is not a multiple of [`BLOCK`] ends
//! with a short block (its missing values count as zero). Everything here is the scalar
//! reference: the CPU matrix-vector kernels of [`crate::host`] read the same bytes.

use std::fmt;
use std::str::FromStr;

/// Values per quantization block (one scale each).
pub const BLOCK: usize = 32;

/// In a quantized checkpoint (`dsocr quantize`), the packed values of `<prefix>.weight`:
/// `<prefix>.weight.qvalues`, U8 `[out, blocks · block_bytes]` (the layout above, row after
/// row), and its scales `<prefix>.weight.qscales`, F32 `[out, blocks]`.
pub const QVALUES: &str = "weight.qvalues";
/// See [`QVALUES`].
pub const QSCALES: &str = "weight.qscales";

/// A weight-only quantization format for the decoder's matrices (`--quant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quant {
    /// 8-bit integers, one f32 scale per block of 32 (9 bits per weight).
    Q8,
    /// 4-bit integers, one f32 scale per block of 32 (5 bits per weight).
    Q4,
}

impl Quant {
    pub fn name(self) -> &'static str {
        match self {
            Quant::Q8 => "q8",
            Quant::Q4 => "q4",
        }
    }

    /// Bytes of quantized values per full block.
    pub fn block_bytes(self) -> usize {
        match self {
            Quant::Q8 => BLOCK,
            Quant::Q4 => BLOCK / 2,
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Quant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "q8" | "q8_0" | "int8" => Ok(Quant::Q8),
            "q4" | "q4_0" | "int4" => Ok(Quant::Q4),
            other => Err(format!("unknown quantization `{other}`: use q8 or q4")),
        }
    }
}

/// Blocks per row of `cols` values.
pub fn blocks_per_row(cols: usize) -> usize {
    cols.div_ceil(BLOCK)
}

/// Quantizes one row: appends `blocks_per_row(row.len())` scales and the packed values
/// (`quant.block_bytes()` per block, short blocks padded with zeros).
pub fn quantize_row(quant: Quant, row: &[f32], scales: &mut Vec<f32>, values: &mut Vec<u8>) {
    let blocks = blocks_per_row(row.len());
    let (s, v) = (scales.len(), values.len());
    scales.resize(s + blocks, 0.0);
    values.resize(v + blocks * quant.block_bytes(), 0);
    quantize_row_into(quant, row, &mut scales[s..], &mut values[v..]);
}

/// [`quantize_row`] into existing buffers of exactly `blocks_per_row(row.len())` scales and
/// that many blocks of values.
pub fn quantize_row_into(quant: Quant, row: &[f32], scales: &mut [f32], values: &mut [u8]) {
    let (blocks, tail) = row.as_chunks::<BLOCK>();
    let mut outputs = scales.iter_mut().zip(values.chunks_exact_mut(quant.block_bytes()));
    for (block, (d, q)) in blocks.iter().zip(&mut outputs) {
        *d = quantize_block(quant, block, q);
    }
    if let (false, Some((d, q))) = (tail.is_empty(), outputs.next()) {
        // Zeros change neither a block's largest magnitude nor the values around them.
        let mut padded = [0f32; BLOCK];
        padded[..tail.len()].copy_from_slice(tail);
        *d = quantize_block(quant, &padded, q);
    }
}

/// One block into `out` (`quant.block_bytes()` bytes); returns its scale.
#[inline(always)]
fn quantize_block(quant: Quant, block: &[f32; BLOCK], out: &mut [u8]) -> f32 {
    match quant {
        Quant::Q8 => {
            let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            for (q, &v) in out.iter_mut().zip(block) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
            }
            d
        }
        Quant::Q4 => {
            let extreme = block.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = extreme / -8.0;
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            let nibble = |v: f32| ((v * inv).round() + 8.0).clamp(0.0, 15.0) as u8;
            for (j, q) in out.iter_mut().enumerate().take(BLOCK / 2) {
                *q = nibble(block[j]) | (nibble(block[j + BLOCK / 2]) << 4);
            }
            d
        }
    }
}

/// The values of one quantized row (`cols` of them) back as f32: the reference the kernels
/// are checked against.
pub fn dequantize_row(quant: Quant, scales: &[f32], values: &[u8], cols: usize, out: &mut [f32]) {
    for (b, out) in out[..cols].chunks_mut(BLOCK).enumerate() {
        let d = scales[b];
        match quant {
            Quant::Q8 => {
                let block = &values[b * BLOCK..(b + 1) * BLOCK];
                for (o, &q) in out.iter_mut().zip(block) {
                    *o = q as i8 as f32 * d;
                }
            }
            Quant::Q4 => {
                let block = &values[b * (BLOCK / 2)..(b + 1) * (BLOCK / 2)];
                for (j, o) in out.iter_mut().enumerate() {
                    let byte = block[j % (BLOCK / 2)];
                    let nibble = if j < BLOCK / 2 { byte & 0x0F } else { byte >> 4 };
                    *o = (nibble as f32 - 8.0) * d;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The round-trip error of every block is at most half a step, the step being the block's
    /// scale: q8 `max|w| / 127`, q4 `max|w| / 8`; q4's range is one step shorter on the side
    /// opposite its extreme value (−8..7), so values within half a step of `−w_m` may be off
    /// by one full step. Rows of 70 values end with a short block.
    #[test]
    fn round_trip_error_is_at_most_half_a_step_per_block() {
        for quant in [Quant::Q8, Quant::Q4] {
            for seed in 0..20 {
                let cols = 70;
                let mut row = pseudo_random(cols, seed);
                row[5] *= 40.0; // an outlier in the first block
                let (mut scales, mut values) = (Vec::new(), Vec::new());
                quantize_row(quant, &row, &mut scales, &mut values);
                assert_eq!(scales.len(), 3);
                assert_eq!(values.len(), 3 * quant.block_bytes());
                let mut back = vec![0f32; cols];
                dequantize_row(quant, &scales, &values, cols, &mut back);
                for (b, block) in row.chunks(BLOCK).enumerate() {
                    let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let levels = if quant == Quant::Q8 { 127.0 } else { 8.0 };
                    let step = amax / levels;
                    let d = scales[b];
                    for (j, w) in block.iter().enumerate() {
                        let clamped = quant == Quant::Q4 && w / d > 7.5;
                        let bound = if clamped { step } else { step / 2.0 } * 1.0001;
                        let err = (back[b * BLOCK + j] - w).abs();
                        assert!(
                            err <= bound,
                            "{quant} seed {seed} block {b}: |{} - {w}| = {err} > {bound}",
                            back[b * BLOCK + j]
                        );
                    }
                }
                // The largest value of a block is exact in both formats (q = ±127, or −8).
                assert!((back[5] - row[5]).abs() <= row[5].abs() * 1e-6, "{quant}: outlier {} vs {}", back[5], row[5]);
            }
        }
    }

    /// A zero block stays zero (no division by a zero scale).
    #[test]
    fn zero_blocks_stay_zero() {
        for quant in [Quant::Q8, Quant::Q4] {
            let (mut scales, mut values) = (Vec::new(), Vec::new());
            quantize_row(quant, &[0.0; 40], &mut scales, &mut values);
            let mut back = vec![1f32; 40];
            dequantize_row(quant, &scales, &values, 40, &mut back);
            assert!(back.iter().all(|&v| v == 0.0), "{quant}: {back:?}");
        }
    }

    #[test]
    fn names_parse() {
        assert_eq!("Q8".parse::<Quant>(), Ok(Quant::Q8));
        assert_eq!("q4_0".parse::<Quant>(), Ok(Quant::Q4));
        assert!("q3".parse::<Quant>().unwrap_err().contains("q8 or q4"));
    }
}
