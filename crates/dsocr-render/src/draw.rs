//! Box overlays and figure crops (spec §8.3).
//!
//! [`draw_overlay`] follows upstream's `draw_bounding_boxes` step by step, on a copy of the
//! original image:
//! - per block a colour, per box: outline (PIL `rectangle(..., width=w)`: `w` nested 1-px
//!   rectangles inside the inclusive box `[x1, x2] × [y1, y2]`), `w` = 4 for `title`, 2
//!   otherwise;
//! - on a separate RGBA overlay the box filled with the colour at alpha 20 and its 1-px border
//!   set transparent (PIL `fill=color_a, outline=(0, 0, 0, 0)`); later boxes overwrite earlier
//!   ones there (no accumulation);
//! - the label at `(x1, max(0, y1 − 15))` in the colour over a white rectangle;
//! - finally the overlay is alpha-composited once over the image (PIL `paste` with the overlay
//!   as mask, `DIV255` rounding).
//!
//! Box whose `x2 < x1` or `y2 < y1` are not drawn (PIL raises and upstream skips them).
//!
//! Deliberate deviations: colours are a fixed function of the label ([`label_color`], in
//! upstream's random range R, G < 200, B < 255) instead of random; the label font is a built-in
//! 8×8 bitmap font (printable ASCII, other characters draw as `?`) instead of PIL's default
//! font.
//!
//! [`figure_crops`] crops the boxes of image matches from the original image (PIL crop box
//! semantics: `x2`, `y2` exclusive). Naming deviates from upstream on purpose (spec pitfall 32):
//! upstream numbers crop files by a per-BOX counter while the markdown links count MATCHES, so
//! a match with two boxes breaks the links. Here the first box of image match `k` is
//! `<stem>_<k>.jpg` — the file the markdown link `images/<stem>_<k>.jpg` points at — and further
//! boxes of the same match are `<stem>_<k>_<j>.jpg` (j = 1, 2, …).

use image::{Rgb, RgbImage};

use crate::font::{glyph, GLYPH_SIZE};
use crate::grounding::Block;

/// Outline width for `title` blocks.
pub const TITLE_WIDTH: u32 = 4;
/// Outline width for all other blocks.
pub const BOX_WIDTH: u32 = 2;
/// Alpha of the translucent box fill.
pub const FILL_ALPHA: u8 = 20;
/// The label is drawn this many pixels above the box top (clamped at 0).
pub const LABEL_OFFSET: u32 = 15;

/// Fixed colours for the labels DeepSeek-OCR commonly emits (all with R, G < 200 and
/// B < 255, upstream's random range).
const KNOWN_COLORS: &[(&str, [u8; 3])] = &[
    ("text", [30, 100, 190]),
    ("title", [190, 30, 30]),
    ("sub_title", [190, 100, 20]),
    ("image", [20, 150, 60]),
    ("image_caption", [100, 160, 20]),
    ("table", [130, 40, 170]),
    ("table_caption", [180, 50, 140]),
    ("table_footnote", [120, 90, 160]),
    ("equation", [0, 140, 140]),
    ("formula", [0, 140, 140]),
    ("footnote", [110, 110, 110]),
    ("header", [150, 120, 30]),
    ("footer", [90, 70, 40]),
    ("list", [40, 60, 120]),
    ("code", [60, 60, 60]),
];

/// The colour of a label: a fixed table for common labels, else derived from an FNV-1a hash of
/// the label (R, G in 0..200, B in 0..255 like upstream's random colours). Deterministic.
pub fn label_color(label: &str) -> Rgb<u8> {
    if let Some((_, c)) = KNOWN_COLORS.iter().find(|(l, _)| *l == label) {
        return Rgb(*c);
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in label.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Rgb([(h % 200) as u8, ((h >> 16) % 200) as u8, ((h >> 32) % 255) as u8])
}

/// Width and height of the label text box (glyph cells of [`GLYPH_SIZE`] px).
pub fn label_text_size(label: &str) -> (u32, u32) {
    (label.chars().count() as u32 * GLYPH_SIZE, GLYPH_SIZE)
}

/// The overlay image: `image` with every block's boxes, fills and labels (see module docs).
pub fn draw_overlay(image: &RgbImage, blocks: &[Block]) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = image.clone();
    // The RGBA overlay of upstream: None = transparent, Some(c) = c at FILL_ALPHA.
    let mut overlay: Vec<Option<Rgb<u8>>> = vec![None; w as usize * h as usize];

    for block in blocks {
        let color = label_color(&block.label);
        let width = if block.is_title() { TITLE_WIDTH } else { BOX_WIDTH };
        for [x1, y1, x2, y2] in block.pixel_boxes(w, h) {
            if x2 < x1 || y2 < y1 {
                continue;
            }
            outline(&mut out, [x1, y1, x2, y2], width, color);

            // Overlay: fill everything, then the 1-px border transparent.
            for y in y1..=y2.min(h.saturating_sub(1)) {
                for x in x1..=x2.min(w.saturating_sub(1)) {
                    let border = x == x1 || x == x2 || y == y1 || y == y2;
                    overlay[(y * w + x) as usize] = if border { None } else { Some(color) };
                }
            }

            let tx = x1;
            let ty = y1.saturating_sub(LABEL_OFFSET);
            let (tw, th) = label_text_size(&block.label);
            fill_rect(&mut out, [tx, ty, tx + tw, ty + th], Rgb([255, 255, 255]));
            draw_text(&mut out, tx, ty, &block.label, color);
        }
    }

    for (px, o) in out.pixels_mut().zip(&overlay) {
        if let Some(c) = o {
            for ch in 0..3 {
                px.0[ch] = blend(px.0[ch], c.0[ch], FILL_ALPHA);
            }
        }
    }
    out
}

/// PIL's paste-with-mask blend: `DIV255(dst·(255 − a) + src·a)`, rounded.
fn blend(dst: u8, src: u8, a: u8) -> u8 {
    let v = dst as u32 * (255 - a as u32) + src as u32 * a as u32 + 128;
    ((v + (v >> 8)) >> 8) as u8
}

/// `width` nested 1-px rectangle outlines inside the inclusive box, clipped to the image.
fn outline(img: &mut RgbImage, [x1, y1, x2, y2]: [u32; 4], width: u32, color: Rgb<u8>) {
    for i in 0..width {
        let (l, t) = (x1 + i, y1 + i);
        let (Some(r), Some(b)) = (x2.checked_sub(i), y2.checked_sub(i)) else {
            break;
        };
        if l > r || t > b {
            break;
        }
        for x in l..=r {
            put(img, x, t, color);
            put(img, x, b, color);
        }
        for y in t..=b {
            put(img, l, y, color);
            put(img, r, y, color);
        }
    }
}

/// Filled inclusive rectangle, clipped.
fn fill_rect(img: &mut RgbImage, [x1, y1, x2, y2]: [u32; 4], color: Rgb<u8>) {
    for y in y1..=y2 {
        for x in x1..=x2 {
            put(img, x, y, color);
        }
    }
}

fn put(img: &mut RgbImage, x: u32, y: u32, color: Rgb<u8>) {
    if x < img.width() && y < img.height() {
        img.put_pixel(x, y, color);
    }
}

/// Draws `text` with the built-in 8×8 font, top-left at (x, y), clipped.
pub fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, color: Rgb<u8>) {
    for (i, c) in text.chars().enumerate() {
        let gx = x + i as u32 * GLYPH_SIZE;
        for (row, bits) in glyph(c).iter().enumerate() {
            for col in 0..GLYPH_SIZE {
                if bits & (1 << col) != 0 {
                    put(img, gx + col, y + row as u32, color);
                }
            }
        }
    }
}

/// One figure crop.
#[derive(Debug, Clone)]
pub struct FigureCrop {
    /// `k`: index of the image match (the markdown link's index).
    pub image_index: usize,
    /// Index of the box within the match (0 for the linked file).
    pub box_index: usize,
    /// Crop box in pixels `[x1, y1, x2, y2)` (right/bottom exclusive).
    pub pixel_box: [u32; 4],
    pub image: RgbImage,
}

impl FigureCrop {
    /// File name under `images/`: `<stem>_<k>.jpg` for the first box, `<stem>_<k>_<j>.jpg` for
    /// further boxes of the same match.
    pub fn file_name(&self, stem: &str) -> String {
        if self.box_index == 0 {
            format!("{stem}_{}.jpg", self.image_index)
        } else {
            format!("{stem}_{}_{}.jpg", self.image_index, self.box_index)
        }
    }
}

/// Crops the boxes of image matches from `image`. Empty or inverted boxes give no crop and a
/// warning message.
pub fn figure_crops(image: &RgbImage, blocks: &[Block]) -> (Vec<FigureCrop>, Vec<String>) {
    let (w, h) = image.dimensions();
    let mut crops = Vec::new();
    let mut warnings = Vec::new();
    for block in blocks {
        let Some(k) = block.image_index else { continue };
        for (j, b) in block.pixel_boxes(w, h).into_iter().enumerate() {
            let [x1, y1, x2, y2] = b;
            let (x2, y2) = (x2.min(w), y2.min(h));
            if x2 <= x1 || y2 <= y1 {
                warnings.push(format!("figure {k} box {j}: empty crop {b:?} on a {w}x{h} image; not saved"));
                continue;
            }
            let crop = image::imageops::crop_imm(image, x1, y1, x2 - x1, y2 - y1).to_image();
            crops.push(FigureCrop { image_index: k, box_index: j, pixel_box: b, image: crop });
        }
    }
    (crops, warnings)
}

/// JPEG bytes of `image` at `quality` (1..=100).
pub fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, quality.clamp(1, 100));
    image.write_with_encoder(encoder)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_matches_pil_div255() {
        assert_eq!(blend(255, 0, 20), 235); // 255*235/255
        assert_eq!(blend(0, 255, 20), 20);
        assert_eq!(blend(100, 100, 20), 100);
        assert_eq!(blend(200, 30, 20), 187); // (200*235 + 30*20)/255 = 186.67 -> 187
    }

    #[test]
    fn colors_are_deterministic_and_in_range() {
        assert_eq!(label_color("title"), label_color("title"));
        assert_ne!(label_color("title"), label_color("text"));
        for l in ["weird_label", "x", "", "表格"] {
            let Rgb([r, g, b]) = label_color(l);
            assert!(r < 200 && g < 200 && b < 255);
            assert_eq!(label_color(l), label_color(l));
        }
    }
}
