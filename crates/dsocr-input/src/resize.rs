//! Pillow-exact bicubic resize of 8-bit RGB images (`Image.resize(size)` with the default
//! `BICUBIC` filter), spec §3.5.
//!
//! Pillow (`libImaging/Resample.c`) resamples separably, horizontal pass first, into an 8-bit
//! intermediate image. Per axis it precomputes, for every output index, a window `[lo, lo+n)` of
//! input indices and normalised Keys-cubic weights (a = −0.5; the support widens with the scale
//! when downscaling, i.e. antialiasing), converts them to 22-bit fixed point and accumulates in
//! 32-bit integers. A pass whose axis keeps its size is skipped. Everything below follows that
//! code operation by operation (same double-precision expressions, same rounding) so results are
//! bit-identical.

use image::RgbImage;
use rayon::prelude::*;

/// Output rows per rayon task of a resampling pass (a 1280-pixel row is ~4 KB).
const ROWS_PER_TASK: usize = 16;

/// Fixed-point precision of the 8-bit coefficients: `32 - 8 - 2` bits.
const PRECISION_BITS: u32 = 22;

/// Support radius of the bicubic filter (before scaling).
const BICUBIC_SUPPORT: f64 = 2.0;

/// Keys cubic convolution kernel with a = −0.5 (Pillow's `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point filter taps of one axis: output index `o` reads input indices
/// `bounds[o].0 .. bounds[o].0 + bounds[o].1` with weights `coeffs[o * ksize ..][..bounds[o].1]`.
struct AxisCoeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    coeffs: Vec<i32>,
}

/// Pillow's `precompute_coeffs` followed by `normalize_coeffs_8bpc` for the full input box.
fn precompute_coeffs(in_size: usize, out_size: usize) -> AxisCoeffs {
    // `(double)(in1 - in0) / outSize` with the box given as floats (exact for our sizes).
    let scale = (in_size as f32) as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = BICUBIC_SUPPORT * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;

    let mut bounds = Vec::with_capacity(out_size);
    let mut coeffs = vec![0i32; out_size * ksize];
    let mut weights = vec![0f64; ksize];
    for o in 0..out_size {
        let center = (o as f64 + 0.5) * scale;
        // C casts truncate toward zero; negative values are clamped to 0 right after.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = hi - lo;
        let mut sum = 0.0;
        for (j, w) in weights[..n].iter_mut().enumerate() {
            *w = bicubic((j as f64 + lo as f64 - center + 0.5) * ss);
            sum += *w;
        }
        let taps = &mut coeffs[o * ksize..o * ksize + n];
        for (k, &w) in taps.iter_mut().zip(&weights[..n]) {
            let w = if sum != 0.0 { w / sum } else { w };
            let scaled = w * f64::from(1u32 << PRECISION_BITS);
            *k = if w < 0.0 { (scaled - 0.5) as i32 } else { (scaled + 0.5) as i32 };
        }
        bounds.push((lo, n));
    }
    AxisCoeffs { ksize, bounds, coeffs }
}

/// `clip8(acc)`: arithmetic shift by the precision, clamped to a byte.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset every accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

fn resample_horizontal(src: &RgbImage, out_w: u32) -> RgbImage {
    let (in_w, h) = src.dimensions();
    let axis = precompute_coeffs(in_w as usize, out_w as usize);
    let in_row = in_w as usize * 3;
    let out_row = out_w as usize * 3;
    let mut out = vec![0u8; out_row * h as usize];
    // Rows are independent: one rayon task per band of rows.
    let band = ROWS_PER_TASK;
    src.as_raw().par_chunks(in_row * band).zip(out.par_chunks_mut(out_row * band)).for_each(|(src_rows, dst_rows)| {
        for (src_row, dst_row) in src_rows.chunks_exact(in_row).zip(dst_rows.chunks_exact_mut(out_row)) {
            for (o, dst) in dst_row.chunks_exact_mut(3).enumerate() {
                let (lo, n) = axis.bounds[o];
                let taps = &axis.coeffs[o * axis.ksize..o * axis.ksize + n];
                let mut acc = [HALF; 3];
                for (px, &k) in src_row[lo * 3..(lo + n) * 3].chunks_exact(3).zip(taps) {
                    for c in 0..3 {
                        acc[c] = acc[c].wrapping_add(i32::from(px[c]).wrapping_mul(k));
                    }
                }
                for c in 0..3 {
                    dst[c] = clip8(acc[c]);
                }
            }
        }
    });
    RgbImage::from_raw(out_w, h, out).expect("buffer size matches dimensions")
}

fn resample_vertical(src: &RgbImage, out_h: u32) -> RgbImage {
    let (w, in_h) = src.dimensions();
    let axis = precompute_coeffs(in_h as usize, out_h as usize);
    let row = w as usize * 3;
    let raw = src.as_raw();
    let mut out = vec![0u8; row * out_h as usize];
    let band = ROWS_PER_TASK;
    out.par_chunks_mut(row * band).enumerate().for_each(|(b, dst_rows)| {
        let mut acc = vec![0i32; row];
        for (i, dst_row) in dst_rows.chunks_exact_mut(row).enumerate() {
            let o = b * band + i;
            let (lo, n) = axis.bounds[o];
            let taps = &axis.coeffs[o * axis.ksize..o * axis.ksize + n];
            acc.fill(HALF);
            // Same sums as Pillow's per-pixel loop, accumulated row by row (integer adds commute).
            for (j, &k) in taps.iter().enumerate() {
                let src_row = &raw[(lo + j) * row..(lo + j + 1) * row];
                for (a, &v) in acc.iter_mut().zip(src_row) {
                    *a = a.wrapping_add(i32::from(v).wrapping_mul(k));
                }
            }
            for (d, &a) in dst_row.iter_mut().zip(&acc) {
                *d = clip8(a);
            }
        }
    });
    RgbImage::from_raw(w, out_h, out).expect("buffer size matches dimensions")
}

/// `image.resize((width, height))` with Pillow's default bicubic filter, bit-exact.
///
/// Horizontal pass first, 8-bit intermediate; an axis that keeps its size is not resampled, so
/// resizing to the same size is a copy. `width` and `height` must be at least 1 (and so must the
/// source's).
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    assert!(width > 0 && height > 0, "resize target must be at least 1x1");
    assert!(src.width() > 0 && src.height() > 0, "resize source must be at least 1x1");
    let horizontal = if width != src.width() { Some(resample_horizontal(src, width)) } else { None };
    let after_h = horizontal.as_ref().unwrap_or(src);
    if height != after_h.height() {
        resample_vertical(after_h, height)
    } else {
        horizontal.unwrap_or_else(|| src.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(values: &[u8]) -> RgbImage {
        RgbImage::from_fn(values.len() as u32, 1, |x, _| image::Rgb([values[x as usize]; 3]))
    }

    fn reds(img: &RgbImage) -> Vec<u8> {
        img.pixels().map(|p| p.0[0]).collect()
    }

    #[test]
    fn identity_is_a_copy() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 31 + y) as u8, (y * 17) as u8, (x ^ y) as u8]));
        assert_eq!(resize_bicubic(&img, 7, 5), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = RgbImage::from_pixel(13, 9, image::Rgb([200, 7, 127]));
        for (w, h) in [(5, 3), (40, 17), (13, 30), (1, 1)] {
            let out = resize_bicubic(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 7, 127]), "{w}x{h}");
        }
    }

    /// 2 → 4 pixels, upscale (scale 0.5, support 2, ss 1), worked out from the §3.5 formulas
    /// (numbers checked with a separate Python transcription of them):
    ///
    /// o=0: center 0.25, window [0, 2) (lo = trunc(-1.25) = -1 → 0, hi = trunc(2.75) = 2),
    ///      x = j + 0.25 → cubic(0.25) = 0.8671875, cubic(1.25) = -0.0703125, sum 0.796875,
    ///      k = [4564390, -370086].  [0, 100]: 2^21 - 37008600 < 0 → 0.  [100, 0]: → 109.
    /// o=1: center 0.75, x = j - 0.25 → 0.8671875, 0.2265625, sum 1.09375, k = [3325484, 868820].
    ///      [0, 100]: (2^21 + 86882000) >> 22 = 21.  [100, 0]: → 79.
    /// o=2, o=3 mirror o=1, o=0. Note the overshoot clipping at the edges (renormalised taps).
    #[test]
    fn upscale_by_hand() {
        assert_eq!(reds(&resize_bicubic(&row(&[0, 100]), 4, 1)), vec![0, 21, 79, 109]);
        assert_eq!(reds(&resize_bicubic(&row(&[100, 0]), 4, 1)), vec![109, 79, 21, 0]);
        // The same along the vertical axis (only the vertical pass runs).
        let col = RgbImage::from_fn(1, 2, |_, y| image::Rgb([[0u8, 100][y as usize]; 3]));
        assert_eq!(reds(&resize_bicubic(&col, 1, 4)), vec![0, 21, 79, 109]);
    }

    /// 4 → 2 pixels, downscale (scale 2, support 4, ss 0.5): o=0 has center 1, window [0, 4),
    /// x = (j - 0.5) * 0.5 = -0.25, 0.25, 0.75, 1.25 → 0.8671875, 0.8671875, 0.2265625, -0.0703125
    /// (sum 1.890625) → k = [1923834, 1923834, 502623, -155987]; o=1 mirrors it.
    /// [255, 0, 0, 0]: (2^21 + 255·1923834) >> 22 = 117; [0, 0, 0, 255]: negative → 0.
    #[test]
    fn downscale_by_hand() {
        assert_eq!(reds(&resize_bicubic(&row(&[0, 0, 0, 255]), 2, 1)), vec![0, 117]);
        assert_eq!(reds(&resize_bicubic(&row(&[255, 0, 0, 0]), 2, 1)), vec![117, 0]);
        let axis = precompute_coeffs(4, 2);
        assert_eq!(axis.bounds, vec![(0, 4), (0, 4)]);
        assert_eq!(&axis.coeffs[0..4], &[1923834, 1923834, 502623, -155987]);
    }

    /// A 3-channel 2-D case: both passes run, horizontal first, 8-bit intermediate.
    #[test]
    fn both_passes_round_through_8_bit() {
        // 2x2 → 4x4 of [[0,100],[100,0]]: horizontal gives rows [0,21,79,109] and [109,79,21,0]
        // (8-bit), then each column [a, b] of 2 → 4 with the same taps.
        let src = RgbImage::from_fn(2, 2, |x, y| image::Rgb([if x == y { 0 } else { 100 }; 3]));
        let out = resize_bicubic(&src, 4, 4);
        let col = |a: i64, b: i64| -> Vec<u8> {
            [[4564390i64, -370086], [3325484, 868820], [868820, 3325484], [-370086, 4564390]]
                .iter()
                .map(|k| ((2097152 + k[0] * a + k[1] * b) >> 22).clamp(0, 255) as u8)
                .collect()
        };
        let h0 = [0i64, 21, 79, 109];
        let h1 = [109i64, 79, 21, 0];
        for x in 0..4 {
            let expect = col(h0[x], h1[x]);
            let got: Vec<u8> = (0..4).map(|y| out.get_pixel(x as u32, y).0[1]).collect();
            assert_eq!(got, expect, "column {x}");
        }
    }

    #[test]
    fn coefficients_by_hand() {
        let axis = precompute_coeffs(2, 4);
        assert_eq!(axis.bounds, vec![(0, 2), (0, 2), (0, 2), (0, 2)]);
        assert_eq!(&axis.coeffs[0..2], &[4564390, -370086]);
        assert_eq!(&axis.coeffs[axis.ksize..axis.ksize + 2], &[3325484, 868820]);
    }
}
