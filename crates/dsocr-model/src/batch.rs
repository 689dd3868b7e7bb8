//! Many pages through the model at once (continuous batching): each page's vision and prompt
//! prefill run alone when it is admitted, then all admitted pages decode together, one token
//! each per [`PageBatch::step`] (the decoder's [`Batcher`]). A page that finishes frees its slot
//! for the next one. The text of every page streams as it is generated, in valid UTF-8 pieces,
//! exactly as [`DeepseekOcr::run`] streams one page; the results are the same ids (tested on
//! the CPU in f32).

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use dsocr_decoder::{Batcher, FinishReason, Sampled, DEFAULT_CHUNK};
use dsocr_input::StreamDecoder;

use crate::{DeepseekOcr, ModelError, OcrRequest, OcrResult};

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

    /// Bytes of the batch's KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.batcher.cache().bytes()
    }

    /// Runs `request`'s vision and prefill and chooses its first token. Its events (and, if it
    /// ends at once, its result) go to `events`. `Err` when it could not start (then nothing of
    /// it is in the batch).
    pub fn admit(&mut self, key: usize, request: &OcrRequest, events: &mut Vec<PageEvent>) -> Result<(), ModelError> {
        let vision_start = Instant::now();
        let vision = match &request.image {
            Some(image) => {
                Some(self.model.encode_image(self.model.prepare(image, request.mode, request.max_crops)?)?)
            }
            None => None,
        };
        let (prompt_ids, embeds) = self.model.prompt_embeddings(&request.prompt, vision.as_ref())?;
        let vision_time = vision_start.elapsed();
        let (image_tokens, grid) = match &vision {
            Some(v) => (v.prepared.image_token_count(), [v.prepared.grid.0 as usize, v.prepared.grid.1 as usize]),
            None => (0, [1, 1]),
        };
        drop(vision);
        let started = Instant::now();
        let sampled = self.batcher.admit(&self.model.decoder, embeds, &prompt_ids, &request.generation)?;
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
        Ok(())
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
                if let Err(e) = batch.admit(next, &requests[next], &mut events) {
                    events.push(PageEvent::Done { key: next, result: Err(e) });
                }
                next += 1;
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
