use burn::prelude::*;

use crate::ProjectorError;

/// The tile grid of a Gundam view, width first as upstream's `images_spatial_crop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGrid {
    pub cols: usize,
    pub rows: usize,
}

/// Side of a square token grid holding `tokens` tokens.
fn grid_side(tokens: usize) -> Result<usize, ProjectorError> {
    let side = (tokens as f64).sqrt().round() as usize;
    if side * side != tokens {
        return Err(ProjectorError::Shape { found: vec![tokens], expected: "a square number of tokens".into() });
    }
    Ok(side)
}

/// Appends `newline` after every row of a `[rows, cols, d]` grid and flattens it row-major.
fn rows_with_newline(grid: Tensor<3>, newline: &Tensor<1>) -> Tensor<2> {
    let [rows, cols, d] = grid.dims();
    let newline = newline.clone().reshape([1, 1, d]).expand([rows, 1, d]);
    Tensor::cat(vec![grid, newline], 1).reshape([rows * (cols + 1), d])
}

/// Lays projected features out as the image-token sequence (spec §5.4).
///
/// `global`: `[1, qb², d]`; `tiles`: `[cols·rows, qt², d]` in row-major tile order.
/// Returns `[N, d]` with N = qb(qb+1) + [tiles] rows·qt·(cols·qt + 1) + 1.
pub fn layout_tokens(
    global: Tensor<3>,
    tiles: Option<(Tensor<3>, TileGrid)>,
    newline: &Tensor<1>,
    separator: &Tensor<1>,
) -> Result<Tensor<2>, ProjectorError> {
    let [_, global_tokens, d] = global.dims();
    let qb = grid_side(global_tokens)?;
    let global = rows_with_newline(global.reshape([qb, qb, d]), newline);

    let mut parts = Vec::with_capacity(3);
    if let Some((tiles, TileGrid { cols, rows })) = tiles {
        let [_, tile_tokens, _] = tiles.dims();
        let qt = grid_side(tile_tokens)?;
        // big[r·qt + y, c·qt + x] = tile[r·cols + c][y·qt + x]
        let stitched =
            tiles.reshape([rows, cols, qt, qt, d]).permute([0, 2, 1, 3, 4]).reshape([rows * qt, cols * qt, d]);
        parts.push(rows_with_newline(stitched, newline));
    }
    parts.push(global);
    parts.push(separator.clone().reshape([1, d]));
    Ok(Tensor::cat(parts, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsocr_weights::{Backend, Precision};

    fn values(t: Tensor<2>) -> Vec<f32> {
        t.into_data().try_to_vec().unwrap()
    }

    /// Each token carries its own id as its single feature, so the layout is readable.
    #[test]
    fn stitched_tiles_come_first_with_newline_per_big_row_then_global_then_separator() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        // 2 cols × 1 row of 2×2 tiles: tile 0 = 10..13, tile 1 = 20..23; global 1×1 = 99.
        let tiles = Tensor::<1>::from_floats([10., 11., 12., 13., 20., 21., 22., 23.], &device).reshape([2, 4, 1]);
        let global = Tensor::<1>::from_floats([99.], &device).reshape([1, 1, 1]);
        let newline = Tensor::<1>::from_floats([-1.], &device);
        let sep = Tensor::<1>::from_floats([-2.], &device);
        let seq = layout_tokens(global, Some((tiles, TileGrid { cols: 2, rows: 1 })), &newline, &sep).unwrap();
        assert_eq!(values(seq), vec![10., 11., 20., 21., -1., 12., 13., 22., 23., -1., 99., -1., -2.]);
    }

    #[test]
    fn global_only_layout_and_token_count() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let global = Tensor::<1>::from_floats([1., 2., 3., 4.], &device).reshape([1, 4, 1]);
        let newline = Tensor::<1>::from_floats([0.], &device);
        let sep = Tensor::<1>::from_floats([9.], &device);
        let seq = layout_tokens(global, None, &newline, &sep).unwrap();
        assert_eq!(values(seq), vec![1., 2., 0., 3., 4., 0., 9.]);
    }

    #[test]
    fn non_square_grid_is_an_error() {
        let device = Backend::Cpu.device(Precision::F32).unwrap();
        let global = Tensor::<3>::zeros([1, 3, 2], &device);
        let v = Tensor::<1>::zeros([2], &device);
        assert!(layout_tokens(global, None, &v, &v).is_err());
    }
}
