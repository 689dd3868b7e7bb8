//! One request through the whole model: preprocessing, vision, prompt, generation.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::prelude::*;
use dsocr_decoder::{generate, FinishReason, Generation, GenerationConfig};
use dsocr_encoder::pixels_from_chw;
use dsocr_input::{
    build_input_ids, normalize, normalize_batch, preprocess_with_max_tiles, Mode, PreparedImage, RgbImage,
};
use dsocr_projector::TileGrid;

use crate::{DeepseekOcr, ModelError};

/// What to run: a prompt (with at most one `<image>`), the image, the view mode, generation settings.
#[derive(Debug, Clone)]
pub struct OcrRequest {
    pub prompt: String,
    pub image: Option<RgbImage>,
    pub mode: Mode,
    /// Largest Gundam tile grid (2..=9; upstream HF uses 9, the vLLM scripts 6).
    pub max_crops: usize,
    pub generation: GenerationConfig,
}

impl OcrRequest {
    pub fn new(prompt: impl Into<String>, image: Option<RgbImage>, mode: Mode) -> Self {
        Self { prompt: prompt.into(), image, mode, max_crops: 9, generation: GenerationConfig::default() }
    }
}

/// Everything the vision half produced for one image (kept for the parity harness).
pub struct VisionOutput {
    pub prepared: PreparedImage,
    /// SAM output of the global view, `[1, C, q, q]`.
    pub sam_global: Tensor<4>,
    /// CLIP output of the global view, `[1, 1+q², W]`.
    pub clip_global: Tensor<3>,
    /// SAM / CLIP outputs of the tiles, if any.
    pub sam_tiles: Option<Tensor<4>>,
    pub clip_tiles: Option<Tensor<3>>,
    /// The image-token embeddings written into the prompt, `[N, hidden]`.
    pub embeds: Tensor<2>,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct OcrResult {
    /// Decoded output, special tokens kept, the final EOS removed.
    pub text: String,
    pub prompt_ids: Vec<u32>,
    /// Generated ids (including the EOS when one was produced).
    pub generated_ids: Vec<u32>,
    pub finish: FinishReason,
    /// Image tokens in the prompt (0 without image).
    pub image_tokens: usize,
    /// Tile grid `[cols, rows]` (`[1, 1]` without tiles).
    pub grid: [usize; 2],
    pub vision_time: Duration,
    pub generation_time: Duration,
}

impl OcrResult {
    pub fn generated_tokens(&self) -> usize {
        self.generated_ids.len()
    }
}

impl DeepseekOcr {
    /// Preprocesses an image for `mode` (Pillow-exact resize, pad, Gundam tiling).
    pub fn prepare(&self, image: &RgbImage, mode: Mode, max_crops: usize) -> Result<PreparedImage, ModelError> {
        Ok(preprocess_with_max_tiles(image, mode, max_crops as u32)?)
    }

    /// Runs the vision half on a prepared image: DeepEncoder on the global view and the tiles,
    /// projector, newline/separator layout.
    pub fn encode_image(&self, prepared: PreparedImage) -> Result<VisionOutput, ModelError> {
        let dtype = self.precision.dtype();
        let side = prepared.global.width() as usize;
        let pixels = pixels_from_chw(normalize(&prepared.global), 1, side, &self.device, dtype)?;
        let global = self.encoder.forward(pixels)?;

        let (sam_tiles, clip_tiles, tiles) = if prepared.tiles.is_empty() {
            (None, None, None)
        } else {
            let tile_side = prepared.tiles[0].width() as usize;
            let values = normalize_batch(&prepared.tiles);
            let pixels = pixels_from_chw(values, prepared.tiles.len(), tile_side, &self.device, dtype)?;
            let out = self.encoder.forward(pixels)?;
            let (cols, rows) = (prepared.grid.0 as usize, prepared.grid.1 as usize);
            (Some(out.sam), Some(out.clip), Some((out.features, TileGrid { cols, rows })))
        };
        let embeds = self.projector.embed_image(global.features, tiles)?;
        Ok(VisionOutput { prepared, sam_global: global.sam, clip_global: global.clip, sam_tiles, clip_tiles, embeds })
    }

    /// [`encode_image`](Self::encode_image) of several pages at once: the global views of
    /// equal size go through the encoder as one batch, and so do all the pages' tiles, so a
    /// page costs a fraction of the launches it costs alone; each page is then projected and
    /// laid out on its own. The outputs are in `prepared`'s order and equal each page's own
    /// (up to the summation order of the larger products). How many pages to pass at once is
    /// the caller's choice: memory grows with it.
    pub fn encode_images(&self, prepared: Vec<PreparedImage>) -> Result<Vec<VisionOutput>, ModelError> {
        if prepared.len() <= 1 {
            return prepared.into_iter().map(|p| self.encode_image(p)).collect();
        }
        let dtype = self.precision.dtype();
        let n = prepared.len();
        // One encoder pass per view size, over the pages that have it: (side, pages, output).
        let mut globals: Vec<Option<(Tensor<4>, Tensor<3>, Tensor<3>)>> = (0..n).map(|_| None).collect();
        let mut sides: Vec<usize> = prepared.iter().map(|p| p.global.width() as usize).collect();
        sides.sort_unstable();
        sides.dedup();
        for side in sides {
            let pages: Vec<usize> = (0..n).filter(|&i| prepared[i].global.width() as usize == side).collect();
            let views: Vec<_> = pages.iter().map(|&i| prepared[i].global.clone()).collect();
            let pixels = pixels_from_chw(normalize_batch(&views), views.len(), side, &self.device, dtype)?;
            let out = self.encoder.forward(pixels)?;
            for (row, &i) in pages.iter().enumerate() {
                globals[i] = Some((
                    out.sam.clone().narrow(0, row, 1),
                    out.clip.clone().narrow(0, row, 1),
                    out.features.clone().narrow(0, row, 1),
                ));
            }
        }
        let mut tiles: Vec<Option<(Tensor<4>, Tensor<3>, Tensor<3>)>> = (0..n).map(|_| None).collect();
        let mut tile_sides: Vec<usize> =
            prepared.iter().filter_map(|p| p.tiles.first().map(|t| t.width() as usize)).collect();
        tile_sides.sort_unstable();
        tile_sides.dedup();
        for side in tile_sides {
            let pages: Vec<usize> =
                (0..n).filter(|&i| prepared[i].tiles.first().is_some_and(|t| t.width() as usize == side)).collect();
            let views: Vec<_> = pages.iter().flat_map(|&i| prepared[i].tiles.iter().cloned()).collect();
            let pixels = pixels_from_chw(normalize_batch(&views), views.len(), side, &self.device, dtype)?;
            let out = self.encoder.forward(pixels)?;
            let mut start = 0;
            for &i in &pages {
                let count = prepared[i].tiles.len();
                tiles[i] = Some((
                    out.sam.clone().narrow(0, start, count),
                    out.clip.clone().narrow(0, start, count),
                    out.features.clone().narrow(0, start, count),
                ));
                start += count;
            }
        }
        let mut outputs = Vec::with_capacity(n);
        for ((prepared, global), tiles) in prepared.into_iter().zip(globals).zip(tiles) {
            let Some((sam_global, clip_global, global_features)) = global else {
                return Err(ModelError::NotStarted);
            };
            let (sam_tiles, clip_tiles, tile_features) = match tiles {
                Some((sam, clip, features)) => {
                    let grid = TileGrid { cols: prepared.grid.0 as usize, rows: prepared.grid.1 as usize };
                    (Some(sam), Some(clip), Some((features, grid)))
                }
                None => (None, None, None),
            };
            let embeds = self.projector.embed_image(global_features, tile_features)?;
            outputs.push(VisionOutput { prepared, sam_global, clip_global, sam_tiles, clip_tiles, embeds });
        }
        Ok(outputs)
    }

    /// Builds the prompt ids (BOS, text, N image tokens, text) and their embeddings.
    pub fn prompt_embeddings(
        &self,
        prompt: &str,
        vision: Option<&VisionOutput>,
    ) -> Result<(Vec<u32>, Tensor<3>), ModelError> {
        let image_tokens = vision.map(|v| v.prepared.image_token_count());
        let ids = build_input_ids(&self.tokenizer, prompt, image_tokens)?.ids;
        let embeds = match vision {
            Some(v) => self.decoder.embed_with_image(&ids, self.tokenizer.image_token_id()?, v.embeds.clone())?,
            None => self.decoder.embed(&ids),
        };
        Ok((ids, embeds))
    }

    /// Runs a request end to end. `on_text` receives the output as it is generated, in pieces
    /// that are always valid UTF-8; returning [`ControlFlow::Break`] stops generation (the result
    /// then has [`FinishReason::Cancelled`]).
    pub fn run(
        &self,
        request: &OcrRequest,
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<OcrResult, ModelError> {
        let vision_start = Instant::now();
        let vision = match &request.image {
            Some(image) => Some(self.encode_image(self.prepare(image, request.mode, request.max_crops)?)?),
            None => None,
        };
        let (prompt_ids, embeds) = self.prompt_embeddings(&request.prompt, vision.as_ref())?;
        let vision_time = vision_start.elapsed();

        let gen_start = Instant::now();
        let mut stream = self.tokenizer.stream_decoder();
        let mut stream_error = None;
        let eos = request.generation.eos_token_id;
        let generation: Generation = generate(&self.decoder, embeds, &prompt_ids, &request.generation, |id| {
            if id == eos {
                return ControlFlow::Continue(());
            }
            match stream.step(id) {
                Ok(Some(piece)) => on_text(&piece),
                Ok(None) => ControlFlow::Continue(()),
                Err(e) => {
                    stream_error = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        if let Some(e) = stream_error {
            return Err(e.into());
        }
        if generation.finish != FinishReason::Cancelled {
            if let Some(rest) = stream.finish()? {
                let _ = on_text(&rest);
            }
        }
        let generation_time = gen_start.elapsed();

        let text_ids: Vec<u32> = generation.ids.iter().copied().filter(|&id| id != eos).collect();
        let text = self.tokenizer.decode(&text_ids)?;
        let (image_tokens, grid) = match &vision {
            Some(v) => (v.prepared.image_token_count(), [v.prepared.grid.0 as usize, v.prepared.grid.1 as usize]),
            None => (0, [1, 1]),
        };
        Ok(OcrResult {
            text,
            prompt_ids,
            generated_ids: generation.ids,
            finish: generation.finish,
            image_tokens,
            grid,
            vision_time,
            generation_time,
        })
    }
}
