//! Host-side resizers for the position tables (spec §5.6), run once at load time in f32.
//!
//! Burn has no antialiased bicubic mode, and these resizes depend only on the target size, so
//! they are done here in plain Rust with PyTorch's `F.interpolate` semantics:
//! - [`resize_bicubic_aa`]: `mode='bicubic', antialias=True, align_corners=False` (SAM and CLIP
//!   absolute-position grids, down- and up-sampling);
//! - [`resize_linear`]: `mode='linear', align_corners=False` (SAM relative-position tables).
//!
//! Weights and sums are computed in f64 and rounded to f32 once at the end (PyTorch works in
//! f32; the difference is at the level of f32 rounding).

/// Keys' cubic convolution kernel with a = −0.5 (the antialiasing filter of PyTorch/Pillow).
fn cubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
    } else {
        0.0
    }
}

/// For each output index: the first input index and the normalised weights of the inputs it
/// reads (PyTorch `_compute_weights_aa`, interp_size 4).
fn bicubic_aa_weights(in_len: usize, out_len: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_len as f64 / out_len as f64;
    let (support, inv_scale) = if scale >= 1.0 { (2.0 * scale, 1.0 / scale) } else { (2.0, 1.0) };
    (0..out_len)
        .map(|o| {
            let center = scale * (o as f64 + 0.5);
            // `as i64` truncates toward zero like PyTorch's static_cast<int64_t>.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_len as i64).max(lo as i64) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|j| cubic((j as f64 - center + 0.5) * inv_scale)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            (lo, w)
        })
        .collect()
}

/// Antialiased bicubic resize of a channels-last grid `[in_h, in_w, channels]` to
/// `[out_h, out_w, channels]` (row-major), separable: width first, then height.
///
/// Panics if `src.len() != in_h * in_w * channels` (callers pass checkpoint tensors whose
/// shapes were already checked).
pub fn resize_bicubic_aa(
    src: &[f32],
    in_h: usize,
    in_w: usize,
    channels: usize,
    out_h: usize,
    out_w: usize,
) -> Vec<f32> {
    assert_eq!(src.len(), in_h * in_w * channels, "resize_bicubic_aa: input length does not match its shape");
    if in_h == out_h && in_w == out_w {
        return src.to_vec();
    }
    let c = channels;
    // Width pass: [in_h, in_w, c] -> [in_h, out_w, c].
    let wx = bicubic_aa_weights(in_w, out_w);
    let mut tmp = vec![0f64; in_h * out_w * c];
    for y in 0..in_h {
        for (x, (lo, weights)) in wx.iter().enumerate() {
            let out = &mut tmp[(y * out_w + x) * c..][..c];
            for (k, &w) in weights.iter().enumerate() {
                let row = &src[(y * in_w + lo + k) * c..][..c];
                out.iter_mut().zip(row).for_each(|(o, &v)| *o += w * v as f64);
            }
        }
    }
    // Height pass: [in_h, out_w, c] -> [out_h, out_w, c].
    let wy = bicubic_aa_weights(in_h, out_h);
    let mut dst = vec![0f64; out_h * out_w * c];
    let row_len = out_w * c;
    for (y, (lo, weights)) in wy.iter().enumerate() {
        let out = &mut dst[y * row_len..][..row_len];
        for (k, &w) in weights.iter().enumerate() {
            let row = &tmp[(lo + k) * row_len..][..row_len];
            out.iter_mut().zip(row).for_each(|(o, &v)| *o += w * v);
        }
    }
    dst.into_iter().map(|v| v as f32).collect()
}

/// Linear resize (align_corners=False) along the first axis of a `[in_len, channels]` table to
/// `[out_len, channels]`.
///
/// Panics if `src.len() != in_len * channels`.
pub fn resize_linear(src: &[f32], in_len: usize, channels: usize, out_len: usize) -> Vec<f32> {
    assert_eq!(src.len(), in_len * channels, "resize_linear: input length does not match its shape");
    if in_len == out_len {
        return src.to_vec();
    }
    let scale = in_len as f64 / out_len as f64;
    let mut dst = Vec::with_capacity(out_len * channels);
    for o in 0..out_len {
        let pos = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (pos.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let t = pos - i0 as f64;
        let (r0, r1) = (&src[i0 * channels..][..channels], &src[i1 * channels..][..channels]);
        dst.extend(r0.iter().zip(r1).map(|(&a, &b)| ((1.0 - t) * a as f64 + t * b as f64) as f32));
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!((g as f64 - w).abs() < 1e-6 * w.abs().max(1.0), "index {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn cubic_kernel_values() {
        assert_eq!(cubic(0.0), 1.0);
        assert_eq!(cubic(1.0), 0.0);
        assert_eq!(cubic(2.0), 0.0);
        assert_eq!(cubic(0.25), 0.8671875);
        assert_eq!(cubic(-0.75), 0.2265625);
        assert_eq!(cubic(1.25), -0.0703125);
    }

    #[test]
    fn bicubic_same_size_is_identity() {
        let src: Vec<f32> = (0..5 * 4 * 3).map(|i| (i as f32 * 0.37).sin()).collect();
        assert_eq!(resize_bicubic_aa(&src, 5, 4, 3, 5, 4), src);
        // The filter itself at scale 1 (used for the unchanged axis when only one changes)
        // puts weight exactly 1 on the output's own index.
        for (o, (lo, w)) in bicubic_aa_weights(7, 7).into_iter().enumerate() {
            for (k, v) in w.into_iter().enumerate() {
                assert_eq!(v, if lo + k == o { 1.0 } else { 0.0 }, "output {o}, input {}", lo + k);
            }
        }
        let wide = resize_bicubic_aa(&src, 5, 4, 3, 5, 8);
        for y in 0..5 {
            for ch in 0..3 {
                let row: Vec<f32> = (0..4).map(|x| src[(y * 4 + x) * 3 + ch]).collect();
                let want: Vec<f64> = resize_bicubic_aa(&row, 1, 4, 1, 1, 8).into_iter().map(f64::from).collect();
                let got: Vec<f32> = (0..8).map(|x| wide[(y * 8 + x) * 3 + ch]).collect();
                assert_close(&got, &want);
            }
        }
    }

    #[test]
    fn bicubic_downsample_4_to_2() {
        // o=0: centre 1, support 4, inputs 0..4 at (k-0.5)/2 = -0.25, 0.25, 0.75, 1.25
        // -> weights 0.8671875, 0.8671875, 0.2265625, -0.0703125 (sum 1.890625);
        // on [1, 2, 3, 4]: 3.0 / 1.890625; o=1 by symmetry 5 - that.
        let got = resize_bicubic_aa(&[1.0, 2.0, 3.0, 4.0], 1, 4, 1, 1, 2);
        let o0 = 3.0 / 1.890625;
        assert_close(&got, &[o0, 5.0 - o0]);
        // The same along the height axis and with 2 channels (channel 1 = 10×).
        let src = [1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0, 40.0];
        let got = resize_bicubic_aa(&src, 4, 1, 2, 2, 1);
        assert_close(&got, &[o0, 10.0 * o0, 5.0 - o0, 10.0 * (5.0 - o0)]);
    }

    #[test]
    fn bicubic_upsample_2_to_4() {
        // o=0: centre 0.25, inputs 0,1 at 0.25, 1.25 -> (0.8671875·1 − 0.0703125·2) / 0.796875
        // o=1: centre 0.75, inputs 0,1 at −0.25, 0.75 -> (0.8671875·1 + 0.2265625·2) / 1.09375
        let got = resize_bicubic_aa(&[1.0, 2.0], 1, 2, 1, 1, 4);
        let o0 = 0.7265625 / 0.796875;
        let o1 = 1.3203125 / 1.09375;
        assert_close(&got, &[o0, o1, 3.0 - o1, 3.0 - o0]);
    }

    #[test]
    fn bicubic_keeps_constants_and_is_separable() {
        let src = vec![0.75f32; 64 * 64 * 2];
        for (h, w) in [(40, 40), (32, 32), (80, 80), (10, 20)] {
            let got = resize_bicubic_aa(&src, 64, 64, 2, h, w);
            assert!(got.iter().all(|&v| (v - 0.75).abs() < 1e-6));
        }
        // A product image f(y)·g(x) resizes to the product of the 1-D resizes.
        let fy = [1.0f32, -2.0, 0.5, 3.0, 1.5];
        let gx = [0.5f32, 2.0, -1.0, 4.0];
        let src: Vec<f32> = fy.iter().flat_map(|&a| gx.iter().map(move |&b| a * b)).collect();
        let got = resize_bicubic_aa(&src, 5, 4, 1, 3, 7);
        let ry = resize_bicubic_aa(&fy, 5, 1, 1, 3, 1);
        let rx = resize_bicubic_aa(&gx, 1, 4, 1, 1, 7);
        let want: Vec<f64> = ry.iter().flat_map(|&a| rx.iter().map(move |&b| a as f64 * b as f64)).collect();
        assert_close(&got, &want);
    }

    #[test]
    fn linear_identity_and_known_values() {
        let src = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(resize_linear(&src, 2, 2, 2), src.to_vec());
        // Up 3 -> 5: sources max((o+0.5)·0.6−0.5, 0) = 0, 0.4, 1.0, 1.6, 2.2 (clamped to the end).
        assert_close(&resize_linear(&[0.0, 1.0, 2.0], 3, 1, 5), &[0.0, 0.4, 1.0, 1.6, 2.0]);
        // Down 4 -> 2: sources 0.5 and 2.5; two channels.
        let src = [0.0f32, 1.0, 10.0, 2.0, 20.0, 3.0, 30.0, 4.0];
        assert_close(&resize_linear(&src, 4, 2, 2), &[5.0, 1.5, 25.0, 3.5]);
        // 127 -> 63 (a SAM global table for 512 views): o=0 reads 0.5·127/63 − 0.5.
        let ramp: Vec<f32> = (0..127).map(|i| i as f32).collect();
        let got = resize_linear(&ramp, 127, 1, 63);
        for (o, &v) in got.iter().enumerate() {
            let want = ((o as f64 + 0.5) * 127.0 / 63.0 - 0.5).clamp(0.0, 126.0);
            assert!((v as f64 - want).abs() < 1e-5, "{o}: {v} vs {want}");
        }
    }
}
