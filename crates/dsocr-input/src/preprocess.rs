//! Views the vision encoder sees (spec §3.2–§3.4, §3.6, §3.7): the global view (stretched or
//! aspect-preserving padded square) and, in Gundam mode, the 640×640 tiles of the dynamic grid.

use std::fmt;
use std::str::FromStr;

use image::{Rgb, RgbImage};
use rayon::prelude::*;

use crate::error::{PromptError, Result};
use crate::resize::resize_bicubic;

/// Side of a Gundam tile, and the hard-coded "no tiles" threshold (both are 640 upstream).
pub const TILE_SIZE: u32 = 640;
/// Fewest tiles of a dynamic grid ((1,1) is never a candidate).
pub const MIN_TILES: u32 = 2;
/// Most tiles of a dynamic grid in the HF path (`dynamic_preprocess` default; VLLM-OFF uses 6).
pub const DEFAULT_MAX_TILES: u32 = 9;
/// Largest supported `max_tiles` (the candidate orders below are tabulated up to 9).
pub const MAX_MAX_TILES: u32 = 9;
/// Pad colour of the global view: `int(0.5 * 255)` = 127 per channel.
pub const PAD_COLOR: [u8; 3] = [127, 127, 127];

/// Resolution mode (spec §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// 512×512 stretched global view, no tiles (73 image tokens).
    Tiny,
    /// 640×640 stretched global view, no tiles (111 image tokens).
    Small,
    /// 1024×1024 padded global view, no tiles (273 image tokens).
    Base,
    /// 1280×1280 padded global view, no tiles (421 image tokens).
    Large,
    /// 1024×1024 padded global view plus 2..=max 640×640 tiles, unless both sides are ≤ 640.
    Gundam,
}

impl Mode {
    pub const ALL: [Mode; 5] = [Mode::Tiny, Mode::Small, Mode::Base, Mode::Large, Mode::Gundam];

    /// Side of the global view.
    pub fn base_size(self) -> u32 {
        match self {
            Mode::Tiny => 512,
            Mode::Small => 640,
            Mode::Base | Mode::Gundam => 1024,
            Mode::Large => 1280,
        }
    }

    /// Side of a tile (crop mode) or of the stretched view (non-crop modes).
    pub fn image_size(self) -> u32 {
        match self {
            Mode::Tiny => 512,
            Mode::Small | Mode::Gundam => 640,
            Mode::Base => 1024,
            Mode::Large => 1280,
        }
    }

    /// Whether the image is cut into tiles (Gundam).
    pub fn crop(self) -> bool {
        self == Mode::Gundam
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Tiny => "tiny",
            Mode::Small => "small",
            Mode::Base => "base",
            Mode::Large => "large",
            Mode::Gundam => "gundam",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = PromptError;

    /// Parses `tiny`, `small`, `base`, `large` or `gundam` (ASCII case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| PromptError::InvalidMode { value: s.to_string() })
    }
}

/// Encoder grid side for a view of side `size`: `ceil((size // 16) / 4)` (spec §3.7).
pub fn query_grid(size: u32) -> usize {
    (size / 16).div_ceil(4) as usize
}

/// The preprocessed image: every view the vision encoder gets, as 8-bit RGB before
/// normalisation (use [`normalize`] / [`normalize_batch`] for the float tensors).
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedImage {
    /// Global view, `base_size × base_size` (HF `images_ori`, vLLM `pixel_values`), computed from
    /// the original image (never from the tile grid).
    pub global: RgbImage,
    /// Local tiles, each `image_size × image_size` (640), row-major over the grid; empty when the
    /// grid is 1×1 (non-crop modes, or Gundam with both sides ≤ 640).
    pub tiles: Vec<RgbImage>,
    /// Tile grid as `(cols, rows)`, width first (HF `images_spatial_crop`); `(1, 1)` when there
    /// are no tiles.
    pub grid: (u32, u32),
    /// Mode the views were made for.
    pub mode: Mode,
    /// Size `(width, height)` of the image given to [`preprocess`] (after EXIF orientation);
    /// grounding boxes refer to it.
    pub original_size: (u32, u32),
}

impl PreparedImage {
    /// Number of tiles (`cols × rows`, or 0 without tiles).
    pub fn num_tiles(&self) -> usize {
        self.tiles.len()
    }

    /// Number of `<image>` placeholder tokens N this image occupies in the LLM sequence
    /// (spec §3.7): global grid rows with a newline each, the stitched local grid rows with a
    /// newline each (tiles only), and one view separator.
    pub fn image_token_count(&self) -> usize {
        let qb = query_grid(self.mode.base_size());
        let mut n = qb * (qb + 1) + 1;
        if !self.tiles.is_empty() {
            let qt = query_grid(self.mode.image_size());
            let (cols, rows) = (self.grid.0 as usize, self.grid.1 as usize);
            n += rows * qt * (cols * qt + 1);
        }
        n
    }
}

/// Preprocesses an RGB image for `mode` with the HF defaults (Gundam grids of up to 9 tiles).
pub fn preprocess(image: &RgbImage, mode: Mode) -> Result<PreparedImage> {
    preprocess_with_max_tiles(image, mode, DEFAULT_MAX_TILES)
}

/// Preprocesses an RGB image for `mode`; `max_tiles` (2..=9) bounds the Gundam grid
/// (9 = HF `infer`, 6 = official vLLM scripts).
pub fn preprocess_with_max_tiles(image: &RgbImage, mode: Mode, max_tiles: u32) -> Result<PreparedImage> {
    if !(MIN_TILES..=MAX_MAX_TILES).contains(&max_tiles) {
        return Err(PromptError::InvalidMaxTiles { value: max_tiles });
    }
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(PromptError::EmptyImage { width, height });
    }

    // The global view and the tiles are independent resizes of the same image: side by side.
    let global = || {
        if mode.crop() {
            pad_to_square(image, mode.base_size())
        } else if mode.image_size() <= 640 {
            // Tiny / Small: stretch to the square (aspect not kept); the pad is then a copy.
            pad_to_square(&resize_bicubic(image, mode.image_size(), mode.image_size()), mode.image_size())
        } else {
            pad_to_square(image, mode.image_size())
        }
    };
    let tiles = || {
        if mode.crop() {
            let grid = tile_grid(width, height, max_tiles);
            let tiles = if grid == (1, 1) { Vec::new() } else { make_tiles(image, grid) };
            (grid, tiles)
        } else {
            ((1, 1), Vec::new())
        }
    };
    let (global, (grid, tiles)) = rayon::join(global, tiles);

    Ok(PreparedImage { global, tiles, grid, mode, original_size: (width, height) })
}

/// Python's `round()` on a double: round half to even (116.5 → 116, 145.5 → 146).
pub fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// Geometry of `ImageOps.pad(image, (size, size))` for a `width × height` source:
/// the contained size `(new_w, new_h)` and the paste offset `(x, y)` (spec §3.3).
pub fn pad_geometry(width: u32, height: u32, size: u32) -> ((u32, u32), (u32, u32)) {
    // `ImageOps.contain`
    let im_ratio = width as f64 / height as f64;
    let dest_ratio = 1.0; // size / size
    let (mut new_w, mut new_h) = (size, size);
    if im_ratio != dest_ratio {
        if im_ratio > dest_ratio {
            new_h = round_half_even(height as f64 / width as f64 * size as f64) as u32;
        } else {
            new_w = round_half_even(width as f64 / height as f64 * size as f64) as u32;
        }
    }
    // Pillow would refuse a 0-pixel side (extreme aspect ratios); keep at least one pixel.
    let (new_w, new_h) = (new_w.max(1), new_h.max(1));
    // `ImageOps.pad`: centre along the padded axis, `round((size - side) * 0.5)`.
    let offset = if new_w != size {
        (round_half_even((size - new_w) as f64 * 0.5) as u32, 0)
    } else if new_h != size {
        (0, round_half_even((size - new_h) as f64 * 0.5) as u32)
    } else {
        (0, 0)
    };
    ((new_w, new_h), offset)
}

/// `ImageOps.pad(image, (size, size), color=(127, 127, 127))`: aspect-preserving bicubic resize
/// into the square, centred on the pad colour.
pub fn pad_to_square(image: &RgbImage, size: u32) -> RgbImage {
    let ((new_w, new_h), (x, y)) = pad_geometry(image.width(), image.height(), size);
    let resized = resize_bicubic(image, new_w, new_h);
    if (new_w, new_h) == (size, size) {
        return resized;
    }
    let mut out = RgbImage::from_pixel(size, size, Rgb(PAD_COLOR));
    image::imageops::replace(&mut out, &resized, i64::from(x), i64::from(y));
    out
}

/// Candidate grids `(cols, rows)` with `2 <= cols·rows <= max_tiles`, in the exact order
/// upstream iterates them: `sorted(set(...), key=cols*rows)`, a stable sort of CPython's set
/// iteration order (tabulated from CPython 3.11; 3.12 gives the same). Only exact ties between
/// candidates depend on it, but keeping it makes the choice identical in every case.
pub fn candidate_grids(max_tiles: u32) -> &'static [(u32, u32)] {
    const ORDERS: [&[(u32, u32)]; 8] = [
        &[(1, 2), (2, 1)],
        &[(1, 2), (2, 1), (3, 1), (1, 3)],
        &[(1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2)],
        &[(1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1)],
        &[(1, 2), (2, 1), (3, 1), (1, 3), (4, 1), (1, 4), (2, 2), (1, 5), (5, 1), (6, 1), (2, 3), (1, 6), (3, 2)],
        &[
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (4, 1),
            (1, 4),
            (2, 2),
            (1, 5),
            (5, 1),
            (6, 1),
            (2, 3),
            (1, 6),
            (3, 2),
            (7, 1),
            (1, 7),
        ],
        &[
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (2, 2),
            (4, 1),
            (1, 4),
            (5, 1),
            (1, 5),
            (1, 6),
            (6, 1),
            (3, 2),
            (2, 3),
            (7, 1),
            (1, 7),
            (4, 2),
            (2, 4),
            (1, 8),
            (8, 1),
        ],
        &[
            (1, 2),
            (2, 1),
            (3, 1),
            (1, 3),
            (2, 2),
            (4, 1),
            (1, 4),
            (5, 1),
            (1, 5),
            (1, 6),
            (6, 1),
            (3, 2),
            (2, 3),
            (7, 1),
            (1, 7),
            (4, 2),
            (2, 4),
            (1, 8),
            (8, 1),
            (1, 9),
            (3, 3),
            (9, 1),
        ],
    ];
    let max_tiles = max_tiles.clamp(MIN_TILES, MAX_MAX_TILES);
    ORDERS[(max_tiles - MIN_TILES) as usize]
}

/// `find_closest_aspect_ratio` (spec §3.4): the candidate whose `cols/rows` is closest to
/// `width/height`; on an exact float tie a later candidate wins if
/// `width·height > 0.5 · 640² · cols · rows`.
pub fn choose_grid(width: u32, height: u32, max_tiles: u32) -> (u32, u32) {
    let aspect = width as f64 / height as f64;
    let area = width as f64 * height as f64;
    let tile_area = (TILE_SIZE * TILE_SIZE) as f64;
    let mut best = (1, 1);
    let mut best_diff = f64::INFINITY;
    for &(cols, rows) in candidate_grids(max_tiles) {
        let diff = (aspect - cols as f64 / rows as f64).abs();
        if diff < best_diff {
            best_diff = diff;
            best = (cols, rows);
        } else if diff == best_diff && area > 0.5 * tile_area * (cols * rows) as f64 {
            best = (cols, rows);
        }
    }
    best
}

/// Gundam tile grid `(cols, rows)`: `(1, 1)` (no tiles) when both sides are ≤ 640 — a
/// hard-coded 640 upstream, inclusive — else [`choose_grid`].
pub fn tile_grid(width: u32, height: u32, max_tiles: u32) -> (u32, u32) {
    if width <= TILE_SIZE && height <= TILE_SIZE {
        (1, 1)
    } else {
        choose_grid(width, height, max_tiles)
    }
}

/// Stretches the image to `(640·cols) × (640·rows)` and cuts it into row-major 640×640 tiles.
fn make_tiles(image: &RgbImage, (cols, rows): (u32, u32)) -> Vec<RgbImage> {
    let resized = resize_bicubic(image, TILE_SIZE * cols, TILE_SIZE * rows);
    (0..cols * rows)
        .map(|i| {
            let (col, row) = (i % cols, i / cols);
            image::imageops::crop_imm(&resized, col * TILE_SIZE, row * TILE_SIZE, TILE_SIZE, TILE_SIZE).to_image()
        })
        .collect()
}

/// One view as the encoder input: CHW float32, RGB, `((u / 255) - 0.5) / 0.5` in float32
/// (torchvision `ToTensor` + `Normalize(0.5, 0.5)`). Upstream then casts to bf16.
pub fn normalize(image: &RgbImage) -> Vec<f32> {
    let plane = image.width() as usize * image.height() as usize;
    let mut out = vec![0f32; 3 * plane];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            out[c * plane + i] = (f32::from(px.0[c]) / 255.0 - 0.5) / 0.5;
        }
    }
    out
}

/// Several equally sized views stacked as `[P, 3, H, W]` (e.g. the tiles).
pub fn normalize_batch(images: &[RgbImage]) -> Vec<f32> {
    let views: Vec<Vec<f32>> = images.par_iter().map(normalize).collect();
    views.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_even_like_python() {
        assert_eq!(round_half_even(116.5), 116);
        assert_eq!(round_half_even(145.5), 146);
        assert_eq!(round_half_even(170.5), 170);
        assert_eq!(round_half_even(0.5), 0);
        assert_eq!(round_half_even(1.5), 2);
        assert_eq!(round_half_even(2.5), 2);
        assert_eq!(round_half_even(790.6), 791);
        assert_eq!(round_half_even(682.4999), 682);
    }

    #[test]
    fn candidate_orders_match_spec() {
        let fmt = |v: &[(u32, u32)]| v.iter().map(|(c, r)| format!("({c},{r})")).collect::<Vec<_>>().join(" ");
        assert_eq!(
            fmt(candidate_grids(6)),
            "(1,2) (2,1) (3,1) (1,3) (4,1) (1,4) (2,2) (1,5) (5,1) (6,1) (2,3) (1,6) (3,2)"
        );
        assert_eq!(
            fmt(candidate_grids(9)),
            "(1,2) (2,1) (3,1) (1,3) (2,2) (4,1) (1,4) (5,1) (1,5) (1,6) (6,1) (3,2) (2,3) (7,1) (1,7) \
             (4,2) (2,4) (1,8) (8,1) (1,9) (3,3) (9,1)"
        );
        // Every table holds exactly the pairs with 2 <= c·r <= max, sorted by product.
        for max in MIN_TILES..=MAX_MAX_TILES {
            let grids = candidate_grids(max);
            let mut expected: Vec<(u32, u32)> = (1..=max)
                .flat_map(|c| (1..=max).map(move |r| (c, r)))
                .filter(|(c, r)| (MIN_TILES..=max).contains(&(c * r)))
                .collect();
            let mut got = grids.to_vec();
            expected.sort();
            got.sort();
            assert_eq!(got, expected, "max {max}");
            assert!(grids.windows(2).all(|w| w[0].0 * w[0].1 <= w[1].0 * w[1].1), "max {max}");
        }
    }

    #[test]
    fn tiling_worked_examples() {
        // (w, h, max, expected grid) — spec §3.7 table.
        let cases = [
            (1700, 2200, 9, (2, 3)),
            (1700, 2200, 6, (2, 3)),
            (800, 600, 9, (3, 2)),
            (800, 600, 6, (3, 2)),
            (1224, 1584, 9, (2, 3)),
            (1191, 1684, 9, (2, 3)),
            (1280, 1024, 6, (3, 2)), // tie (2,2)/(3,2): area 1,310,720 > 1,228,800
            (1280, 1024, 9, (3, 2)), // (3,3) ties too but loses the area rule
            (641, 300, 9, (2, 1)),
            (3000, 1000, 9, (3, 1)),
            (500, 2000, 9, (1, 4)),
            (300, 200, 9, (1, 1)),
            (640, 640, 9, (1, 1)),
            (640, 641, 9, (2, 2)), // ties with (3,3), area too small for it
        ];
        for (w, h, max, grid) in cases {
            assert_eq!(tile_grid(w, h, max), grid, "{w}x{h} max {max}");
        }
        // The tie itself: without the area rule the first of the tied candidates would stay.
        assert_eq!(choose_grid(1280, 1024, 6), (3, 2));
        assert_eq!(choose_grid(640, 512, 6), (2, 2)); // same aspect, area below the threshold
    }

    #[test]
    fn token_counts_of_worked_examples() {
        let count = |w: u32, h: u32, mode: Mode| {
            let img = RgbImage::new(w, h);
            preprocess(&img, mode).unwrap().image_token_count()
        };
        assert_eq!(count(300, 200, Mode::Tiny), 73);
        assert_eq!(count(300, 200, Mode::Small), 111);
        assert_eq!(count(300, 200, Mode::Base), 273);
        assert_eq!(count(300, 200, Mode::Large), 421);
        assert_eq!(count(300, 200, Mode::Gundam), 273);
        assert_eq!(count(800, 600, Mode::Gundam), 893);
        assert_eq!(count(641, 300, Mode::Gundam), 483);
        assert_eq!(count(1700, 2200, Mode::Gundam), 903);
        assert_eq!(count(3000, 1000, Mode::Gundam), 583);
        assert_eq!(count(500, 2000, Mode::Gundam), 713);
    }

    #[test]
    fn pad_geometry_worked_examples() {
        assert_eq!(pad_geometry(1700, 2200, 1024), ((791, 1024), (116, 0)));
        assert_eq!(pad_geometry(300, 200, 1024), ((1024, 683), (0, 170)));
        assert_eq!(pad_geometry(800, 600, 1024), ((1024, 768), (0, 128)));
        assert_eq!(pad_geometry(1191, 1684, 1024), ((724, 1024), (150, 0)));
        assert_eq!(pad_geometry(1280, 1024, 1024), ((1024, 819), (0, 102)));
        assert_eq!(pad_geometry(641, 300, 1024), ((1024, 479), (0, 272)));
        assert_eq!(pad_geometry(1700, 2200, 1280), ((989, 1280), (146, 0)));
        assert_eq!(pad_geometry(800, 600, 1280), ((1280, 960), (0, 160)));
        assert_eq!(pad_geometry(1024, 1024, 1024), ((1024, 1024), (0, 0)));
    }

    #[test]
    fn padded_view_layout() {
        // 8×4 red image into 4×4: contained 4×2 at y=1, grey above and below.
        let img = RgbImage::from_pixel(8, 4, Rgb([200, 0, 0]));
        let out = pad_to_square(&img, 4);
        for y in 0..4 {
            let expect = if (1..3).contains(&y) { [200, 0, 0] } else { PAD_COLOR };
            for x in 0..4 {
                assert_eq!(out.get_pixel(x, y).0, expect, "({x},{y})");
            }
        }
    }

    #[test]
    fn tiles_are_row_major_crops() {
        // A 1300×700 image (grid 2x1 with max 9) whose left half is dark and right half bright.
        let img = RgbImage::from_fn(1300, 700, |x, _| Rgb([if x < 650 { 10 } else { 240 }; 3]));
        let prepared = preprocess(&img, Mode::Gundam).unwrap();
        assert_eq!(prepared.grid, (2, 1));
        assert_eq!(prepared.tiles.len(), 2);
        assert_eq!(prepared.tiles[0].get_pixel(0, 0).0, [10; 3]);
        assert_eq!(prepared.tiles[1].get_pixel(639, 639).0, [240; 3]);
        assert_eq!(prepared.global.dimensions(), (1024, 1024));
        assert_eq!(prepared.original_size, (1300, 700));
    }

    #[test]
    fn modes_parse_and_print() {
        for m in Mode::ALL {
            assert_eq!(m.to_string().parse::<Mode>().unwrap(), m);
        }
        assert_eq!("Gundam".parse::<Mode>().unwrap(), Mode::Gundam);
        assert!(matches!("huge".parse::<Mode>(), Err(PromptError::InvalidMode { .. })));
        assert!(matches!(
            preprocess_with_max_tiles(&RgbImage::new(4, 4), Mode::Gundam, 10),
            Err(PromptError::InvalidMaxTiles { value: 10 })
        ));
        assert!(matches!(preprocess(&RgbImage::new(0, 4), Mode::Base), Err(PromptError::EmptyImage { .. })));
    }

    #[test]
    fn normalize_is_chw_float32() {
        let img = RgbImage::from_fn(2, 1, |x, _| Rgb([[0, 255][x as usize], 127, 128]));
        let v = normalize(&img);
        assert_eq!(v.len(), 6);
        assert_eq!(&v[0..2], &[-1.0, 1.0]);
        assert_eq!(v[2], (127f32 / 255.0 - 0.5) / 0.5);
        assert!((v[2] + 0.003921628).abs() < 1e-7);
        assert_eq!(v[4], (128f32 / 255.0 - 0.5) / 0.5);
    }
}
