//! Many pages through the model at once (continuous batching): pages admitted together share
//! one vision pass and, for equal prompt lengths, one prefill ([`PageBatch::admit_many`]; one
//! page alone through [`PageBatch::admit`]), then all admitted pages decode together, one token
//! each per [`PageBatch::step`] (the decoder's [`Batcher`]). A page that finishes frees its slot
//! for the next one. The text of every page streams as it is generated, in valid UTF-8 pieces,
//! exactly as [`DeepseekOcr::run`] streams one page; the results are the same ids (tested on
//! the CPU in f32).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use dsocr_decoder::{Batcher, FinishReason, Prompt, Sampled, StepReport, DEFAULT_CHUNK};
use dsocr_input::StreamDecoder;

use crate::{DeepseekOcr, ModelError, OcrRequest, OcrResult, VisionOutput};

/// Pages admitted together by default ([`PageBatch::admit_many`], [`DeepseekOcr::run_batched`]):
/// their views share one encoder pass and their prompts one prefill. Memory grows with it
/// (SAM's global attention of a 1024² view holds ~1 GiB of scores in half precision).
pub const ADMIT_GROUP: usize = 4;

/// What a batch reports; `key` is the caller's name for the page.
#[derive(Debug)]
pub enum PageEvent {
    Text { key: usize, piece: String },
    Done { key: usize, result: Result<OcrResult, ModelError> },
}

struct Live<'m> {
    key: usize,
    stream: StreamDecoder<'m>,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
    eos: u32,
    image_tokens: usize,
    grid: [usize; 2],
    vision_time: Duration,
    started: Instant,
}

/// Pages decoded together in up to `slots` sequences.
pub struct PageBatch<'m> {
    model: &'m DeepseekOcr,
    batcher: Batcher,
    live: HashMap<u64, Live<'m>>,
}

impl<'m> PageBatch<'m> {
    pub fn new(model: &'m DeepseekOcr, slots: usize) -> Self {
        Self { model, batcher: Batcher::new(&model.decoder, slots, DEFAULT_CHUNK), live: HashMap::new() }
    }

    pub fn slots(&self) -> usize {
        self.batcher.slots()
    }

    /// Pages being decoded.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    pub fn has_room(&self) -> bool {
        self.batcher.has_free_slot()
    }

    /// How the batched steps ran so far (graphs, recordings).
    pub fn step_report(&self) -> StepReport {
        self.batcher.step_report()
    }

    /// Bytes of the batch's KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.batcher.cache_bytes()
    }

    /// Runs `request`'s vision and prefill and chooses its first token. Its events (and, if it
    /// ends at once, its result) go to `events`. `Err` when it could not start (then nothing of
    /// it is in the batch).
    pub fn admit(&mut self, key: usize, request: &OcrRequest, events: &mut Vec<PageEvent>) -> Result<(), ModelError> {
        self.admit_many(&[(key, request)], events).pop().unwrap_or(Err(ModelError::NotStarted))
    }

    /// [`admit`](Self::admit) of several pages at once: their views are encoded together
    /// ([`DeepseekOcr::encode_images`]) and their prompts of equal length prefilled together
    /// ([`Batcher::admit_batch`]). The results are in `requests`' order; a page that fails
    /// fails alone (if the joint vision pass fails, each page is encoded on its own). Each
    /// page's vision time is its share of the joint pass.
    pub fn admit_many(
        &mut self,
        requests: &[(usize, &OcrRequest)],
        events: &mut Vec<PageEvent>,
    ) -> Vec<Result<(), ModelError>> {
        let vision_start = Instant::now();
        let mut results: Vec<Result<(), ModelError>> = requests.iter().map(|_| Ok(())).collect();
        // Preprocessing, then one vision pass over the pages with images.
        let mut prepared = Vec::new();
        let mut with_image = Vec::new();
        for (i, (_, request)) in requests.iter().enumerate() {
            if let Some(image) = &request.image {
                match self.model.prepare(image, request.mode, request.max_crops) {
                    Ok(p) => {
                        prepared.push(p);
                        with_image.push(i);
                    }
                    Err(e) => results[i] = Err(e),
                }
            }
        }
        let mut vision: Vec<Option<VisionOutput>> = requests.iter().map(|_| None).collect();
        match self.model.encode_images(prepared.clone()) {
            Ok(outputs) => {
                for (&i, out) in with_image.iter().zip(outputs) {
                    vision[i] = Some(out);
                }
            }
            Err(_) if prepared.len() > 1 => {
                for (&i, p) in with_image.iter().zip(prepared) {
                    match self.model.encode_image(p) {
                        Ok(out) => vision[i] = Some(out),
                        Err(e) => results[i] = Err(e),
                    }
                }
            }
            Err(e) => {
                if let Some(&i) = with_image.first() {
                    results[i] = Err(e);
                }
            }
        }
        // Prompts of the pages still standing.
        let mut pages = Vec::new();
        for (i, (key, request)) in requests.iter().enumerate() {
            if results[i].is_err() {
                continue;
            }
            let vision = vision[i].take();
            match self.model.prompt_embeddings(&request.prompt, vision.as_ref()) {
                Ok((ids, embeds)) => {
                    let (image_tokens, grid) = match &vision {
                        Some(v) => {
                            (v.prepared.image_token_count(), [v.prepared.grid.0 as usize, v.prepared.grid.1 as usize])
                        }
                        None => (0, [1, 1]),
                    };
                    pages.push((i, *key, *request, ids, embeds, image_tokens, grid));
                }
                Err(e) => results[i] = Err(e),
            }
        }
        let vision_time = vision_start.elapsed() / pages.len().max(1) as u32;
        let started = Instant::now();
        let prompts = pages
            .iter()
            .map(|(_, _, request, ids, embeds, _, _)| Prompt {
                embeds: embeds.clone(),
                ids: ids.as_slice(),
                cfg: &request.generation,
            })
            .collect();
        let admitted = self.batcher.admit_batch(&self.model.decoder, prompts);
        for ((i, key, request, prompt_ids, _, image_tokens, grid), sampled) in pages.into_iter().zip(admitted) {
            match sampled {
                Ok(sampled) => {
                    let live = Live {
                        key,
                        stream: self.model.tokenizer.stream_decoder(),
                        prompt_ids,
                        generated: Vec::new(),
                        eos: request.generation.eos_token_id,
                        image_tokens,
                        grid,
                        vision_time,
                        started,
                    };
                    self.live.insert(sampled.sequence, live);
                    self.record(sampled, events);
                }
                Err(e) => results[i] = Err(e.into()),
            }
        }
        results
    }

    /// One decode step of every live page.
    pub fn step(&mut self, events: &mut Vec<PageEvent>) {
        for sampled in self.batcher.step(&self.model.decoder) {
            self.record(sampled, events);
        }
    }

    /// Stops page `key`; its result is [`FinishReason::Cancelled`] with the text so far.
    pub fn cancel(&mut self, key: usize, events: &mut Vec<PageEvent>) {
        let Some((&sequence, _)) = self.live.iter().find(|(_, l)| l.key == key) else { return };
        self.batcher.cancel(sequence);
        if let Some(live) = self.live.remove(&sequence) {
            let result = self.finish(live, FinishReason::Cancelled);
            events.push(PageEvent::Done { key, result });
        }
    }

    fn record(&mut self, sampled: Sampled, events: &mut Vec<PageEvent>) {
        let Some(live) = self.live.get_mut(&sampled.sequence) else { return };
        if let Some(id) = sampled.token {
            live.generated.push(id);
            if id != live.eos {
                match live.stream.step(id) {
                    Ok(Some(piece)) => events.push(PageEvent::Text { key: live.key, piece }),
                    Ok(None) => {}
                    Err(e) => {
                        let key = live.key;
                        self.batcher.cancel(sampled.sequence);
                        self.live.remove(&sampled.sequence);
                        events.push(PageEvent::Done { key, result: Err(e.into()) });
                        return;
                    }
                }
            }
        }
        if let Some(finish) = sampled.finish {
            if let Some(mut live) = self.live.remove(&sampled.sequence) {
                let key = live.key;
                match live.stream.finish() {
                    Ok(Some(rest)) => events.push(PageEvent::Text { key, piece: rest }),
                    Ok(None) => {}
                    Err(e) => {
                        events.push(PageEvent::Done { key, result: Err(e.into()) });
                        return;
                    }
                }
                let result = self.finish(live, finish);
                events.push(PageEvent::Done { key, result });
            }
        }
    }

    fn finish(&self, live: Live<'m>, finish: FinishReason) -> Result<OcrResult, ModelError> {
        let text_ids: Vec<u32> = live.generated.iter().copied().filter(|&id| id != live.eos).collect();
        let text = self.model.tokenizer.decode(&text_ids)?;
        Ok(OcrResult {
            text,
            prompt_ids: live.prompt_ids,
            generated_ids: live.generated,
            finish,
            image_tokens: live.image_tokens,
            grid: live.grid,
            vision_time: live.vision_time,
            generation_time: live.started.elapsed(),
        })
    }
}

impl DeepseekOcr {
    /// Runs `requests` with up to `slots` pages decoding together, admitting the next request
    /// whenever a slot is free. `on_event` sees every page's text pieces and result (keys are
    /// indices into `requests`); its `Break` stops everything (unfinished pages end
    /// [`FinishReason::Cancelled`]). Returns the results in request order.
    pub fn run_batched(
        &self,
        requests: &[OcrRequest],
        slots: usize,
        mut on_event: impl FnMut(&PageEvent) -> ControlFlow<()>,
    ) -> Vec<Result<OcrResult, ModelError>> {
        let mut results: Vec<Option<Result<OcrResult, ModelError>>> = (0..requests.len()).map(|_| None).collect();
        let mut batch = PageBatch::new(self, slots);
        let mut next = 0;
        let mut events = Vec::new();
        let mut stop = false;
        loop {
            while !stop && next < requests.len() && batch.has_room() {
                let room = batch.slots() - batch.live();
                let end = requests.len().min(next + ADMIT_GROUP.min(room));
                let group: Vec<(usize, &OcrRequest)> = (next..end).map(|i| (i, &requests[i])).collect();
                for ((key, _), result) in group.iter().zip(batch.admit_many(&group, &mut events)) {
                    if let Err(e) = result {
                        events.push(PageEvent::Done { key: *key, result: Err(e) });
                    }
                }
                next = end;
            }
            if batch.live() == 0 && (stop || next >= requests.len()) && events.is_empty() {
                break;
            }
            if events.is_empty() {
                batch.step(&mut events);
            }
            for event in events.drain(..) {
                if !stop && on_event(&event).is_break() {
                    stop = true;
                }
                if let PageEvent::Done { key, result } = event {
                    results[key] = Some(result);
                }
            }
            if stop {
                let keys: Vec<usize> = batch.live.values().map(|l| l.key).collect();
                for key in keys {
                    batch.cancel(key, &mut events);
                }
            }
        }
        results.into_iter().map(|r| r.unwrap_or(Err(ModelError::NotStarted))).collect()
    }
}
