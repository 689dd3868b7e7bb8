//! The engine's worker loop with continuous batching ([`EngineOptions::batch`] > 1).
//!
//! Requests are documents. Each active document has at most one page in the batch at a time,
//! so its events keep the order of the document loop (`DocumentStarted`, per page
//! `PageStarted`, `Text`…, `PageDone`); pages of *different* requests decode together. Between
//! decode steps the loop takes new requests from the channel and admits the next page of every
//! active document that has none in flight, while slots are free (its vision and prefill run
//! then, alone). A document whose page fails, that is cancelled, or whose deadline passes ends
//! alone; the others go on.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use dsocr_input::{Mode, RgbImage};
use dsocr_model::{OcrResult, PageBatch, PageEvent};

use crate::document::{after_retry, page_request, page_result, wants_retry, OpenDocument};
use crate::engine::{call_sink, count_page, finish_job, panic_message, Queued, Shared};
use crate::{Event, FinishReason, Ocr, OcrError};

/// A page in the batch.
struct InFlight {
    page: usize,
    image: RgbImage,
    mode: Mode,
    /// The first run, while its base-mode retry is in flight.
    first: Option<OcrResult>,
}

/// A request being worked on.
struct Active {
    queued: Queued,
    doc: OpenDocument,
    /// Pages still to admit (1-based).
    pending: VecDeque<usize>,
    in_flight: Option<InFlight>,
    started: Instant,
}

impl Active {
    fn stopped(&self, shared: &Shared) -> bool {
        self.queued.ticket.is_cancelled() || shared.cancel_all.load(Ordering::SeqCst)
    }

    fn timed_out(&self) -> bool {
        self.queued.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Hands `event` to the request's sink; `false` when it asked to stop.
    fn emit(&mut self, event: Event) -> bool {
        call_sink(&mut self.queued.on_event, event).is_continue()
    }
}

/// Runs requests from `receiver` until the channel closes, up to `slots` pages at once.
pub(crate) fn run(ocr: &Ocr, shared: &Shared, receiver: mpsc::Receiver<Queued>, slots: usize) {
    let model = ocr.model();
    let mut batch = PageBatch::new(model, slots);
    let mut active: Vec<Active> = Vec::new();
    // Batch key → ticket id of the request the page belongs to.
    let mut keys: HashMap<usize, u64> = HashMap::new();
    let mut next_key = 0usize;
    let mut events = Vec::new();
    let mut open = true;
    loop {
        // Intake: wait when idle, otherwise take what has arrived.
        if active.is_empty() {
            if !open {
                return;
            }
            match receiver.recv() {
                Ok(q) => start(ocr, shared, q, &mut active),
                Err(_) => return,
            }
        }
        loop {
            match receiver.try_recv() {
                Ok(q) => start(ocr, shared, q, &mut active),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }

        // Requests stopped from outside (cancelled, past the deadline) end now.
        let mut k = 0;
        while k < active.len() {
            let (stopped, timed_out) = (active[k].stopped(shared), active[k].timed_out());
            if stopped || timed_out {
                let a = active.remove(k);
                drop_pages(&mut batch, &mut keys, a.queued.ticket.id());
                let path = a.doc.path.clone();
                let error = if timed_out && !stopped {
                    OcrError::TimedOut { path, after: a.queued.job.timeout.unwrap_or_default() }
                } else {
                    OcrError::Cancelled { path }
                };
                finish(shared, a, Err(error));
            } else {
                k += 1;
            }
        }

        // Admission: the next page of every request without one in flight, while slots are free.
        let mut k = 0;
        while k < active.len() && batch.has_room() {
            if active[k].in_flight.is_some() {
                k += 1;
                continue;
            }
            match admit_next(ocr, &mut batch, &mut active[k], &mut next_key, &mut events) {
                Ok(Some(key)) => {
                    keys.insert(key, active[k].queued.ticket.id());
                    k += 1;
                }
                // Nothing left to run: the document is complete.
                Ok(None) => {
                    let a = active.remove(k);
                    shared.running.fetch_sub(1, Ordering::SeqCst);
                    finish_job(shared, a.queued.on_done, a.started, Ok(a.doc.result));
                }
                Err(error) => {
                    let a = active.remove(k);
                    finish(shared, a, Err(error));
                }
            }
            dispatch(ocr, shared, &mut batch, &mut active, &mut keys, &mut next_key, &mut events);
        }

        if batch.live() > 0 {
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| batch.step(&mut events)));
            if let Err(payload) = stepped {
                // The batch's state is unknown after a panic in the model: every request with a
                // page in it fails (they are named in the error), the others go on in a new batch.
                let message = panic_message(&*payload);
                events.clear();
                keys.clear();
                batch = PageBatch::new(model, slots);
                let mut k = 0;
                while k < active.len() {
                    if active[k].in_flight.is_some() {
                        let a = active.remove(k);
                        let error = OcrError::Panicked { path: a.doc.path.clone(), message: message.clone() };
                        finish(shared, a, Err(error));
                    } else {
                        k += 1;
                    }
                }
                continue;
            }
            dispatch(ocr, shared, &mut batch, &mut active, &mut keys, &mut next_key, &mut events);
        }
    }
}

/// Opens a new request's document (it fails alone if it cannot be opened).
fn start(ocr: &Ocr, shared: &Shared, queued: Queued, active: &mut Vec<Active>) {
    shared.queued.fetch_sub(1, Ordering::SeqCst);
    let path = queued.job.source.path();
    if queued.ticket.is_cancelled() || shared.cancel_all.load(Ordering::SeqCst) {
        return finish_job(shared, queued.on_done, Instant::now(), Err(OcrError::Cancelled { path }));
    }
    if queued.deadline.is_some_and(|d| Instant::now() >= d) {
        let after = queued.job.timeout.unwrap_or_default();
        return finish_job(shared, queued.on_done, Instant::now(), Err(OcrError::TimedOut { path, after }));
    }
    let doc = match ocr.open(queued.job.source.clone(), &queued.job.name, &queued.job.options) {
        Ok(doc) => doc,
        Err(e) => return finish_job(shared, queued.on_done, Instant::now(), Err(e)),
    };
    let pending = doc.pages.iter().copied().collect();
    let mut a = Active { queued, doc, pending, in_flight: None, started: Instant::now() };
    shared.running.fetch_add(1, Ordering::SeqCst);
    let started = a.doc.content.started(&a.doc.path, a.doc.pages.len());
    if !a.emit(started) {
        a.queued.ticket.cancel();
    }
    active.push(a);
}

/// Admits the next page of `a`: `Ok(Some(key))` when a page went into the batch, `Ok(None)`
/// when the document has no pages left. PDF pages that fail are reported and skipped.
fn admit_next(
    ocr: &Ocr,
    batch: &mut PageBatch<'_>,
    a: &mut Active,
    next_key: &mut usize,
    events: &mut Vec<PageEvent>,
) -> Result<Option<usize>, OcrError> {
    let options = a.queued.job.options.clone();
    let pdf = a.doc.is_pdf();
    while let Some(page) = a.pending.pop_front() {
        let rendered = a.doc.content.images(&a.doc.path, &[page], options.pdf_dpi).next();
        let (image, warnings) = match rendered {
            Some(Ok(r)) => r,
            Some(Err(error)) => {
                if !pdf {
                    return Err(error);
                }
                a.doc.result.add_failed(&error);
                if !a.emit(Event::PageFailed { page, error }) {
                    return Err(OcrError::Cancelled { path: a.doc.path.clone() });
                }
                continue;
            }
            None => continue,
        };
        for warning in warnings {
            if !a.emit(Event::Note { page, message: format!("renderer: {warning}") }) {
                return Err(OcrError::Cancelled { path: a.doc.path.clone() });
            }
        }
        if !a.emit(Event::PageStarted { page, pages: a.doc.total }) {
            return Err(OcrError::Cancelled { path: a.doc.path.clone() });
        }
        let mode = options.mode;
        let key = *next_key;
        *next_key += 1;
        match admit(ocr, batch, key, &image, mode, pdf, &options, events) {
            Ok(()) => {
                a.in_flight = Some(InFlight { page, image, mode, first: None });
                return Ok(Some(key));
            }
            Err(source) => {
                let what = a.doc.content.what(&a.doc.name, page, a.doc.total);
                let error = OcrError::Model { path: a.doc.path.clone(), page, what, source: Box::new(source) };
                if !pdf {
                    return Err(error);
                }
                a.doc.result.add_failed(&error);
                if !a.emit(Event::PageFailed { page, error }) {
                    return Err(OcrError::Cancelled { path: a.doc.path.clone() });
                }
            }
        }
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
fn admit(
    ocr: &Ocr,
    batch: &mut PageBatch<'_>,
    key: usize,
    image: &RgbImage,
    mode: Mode,
    pdf: bool,
    options: &crate::OcrOptions,
    events: &mut Vec<PageEvent>,
) -> Result<(), dsocr_model::ModelError> {
    let generation = ocr.generation_config(options, pdf);
    let request = page_request(image, mode, &generation, options);
    // A panic while admitting (vision, prefill) fails this page only; the batch is untouched
    // until the new sequence is inserted at the very end.
    std::panic::catch_unwind(AssertUnwindSafe(|| batch.admit(key, &request, events))).unwrap_or_else(|payload| {
        Err(dsocr_model::ModelError::Input(format!("internal error: {}", panic_message(&*payload))))
    })
}

/// Hands the batch's events to their requests: text pieces, finished pages (with the base-mode
/// retry), failures.
#[allow(clippy::too_many_arguments)]
fn dispatch(
    ocr: &Ocr,
    shared: &Shared,
    batch: &mut PageBatch<'_>,
    active: &mut Vec<Active>,
    keys: &mut HashMap<usize, u64>,
    next_key: &mut usize,
    events: &mut Vec<PageEvent>,
) {
    while !events.is_empty() {
        let pending: Vec<PageEvent> = std::mem::take(events);
        for event in pending {
            let key = match &event {
                PageEvent::Text { key, .. } | PageEvent::Done { key, .. } => *key,
            };
            let Some(&ticket) = keys.get(&key) else { continue };
            let Some(k) = active.iter().position(|a| a.queued.ticket.id() == ticket) else {
                keys.remove(&key);
                continue;
            };
            match event {
                PageEvent::Text { piece, .. } => {
                    let page = active[k].in_flight.as_ref().map_or(0, |f| f.page);
                    if !active[k].emit(Event::Text { page, piece }) {
                        active[k].queued.ticket.cancel();
                        batch.cancel(key, events);
                    }
                }
                PageEvent::Done { result, .. } => {
                    keys.remove(&key);
                    let a = &mut active[k];
                    let Some(mut flight) = a.in_flight.take() else { continue };
                    let outcome = match result {
                        Ok(run) if run.finish == FinishReason::Cancelled => {
                            Err(OcrError::Cancelled { path: a.doc.path.clone() })
                        }
                        Ok(run) => Ok(run),
                        Err(source) => {
                            let what = a.doc.content.what(&a.doc.name, flight.page, a.doc.total);
                            Err(OcrError::Model {
                                path: a.doc.path.clone(),
                                page: flight.page,
                                what,
                                source: Box::new(source),
                            })
                        }
                    };
                    let options = a.queued.job.options.clone();
                    match outcome {
                        Ok(run) => {
                            if flight.first.is_none() && wants_retry(&options, flight.mode, &run) {
                                let (finish, tokens, mode) = (run.finish, run.generated_tokens(), flight.mode);
                                let page = flight.page;
                                if !a.emit(Event::Retrying { page, finish, tokens, mode }) {
                                    a.queued.ticket.cancel();
                                    continue;
                                }
                                let new_key = *next_key;
                                *next_key += 1;
                                let pdf = a.doc.is_pdf();
                                match admit(ocr, batch, new_key, &flight.image, Mode::Base, pdf, &options, events) {
                                    Ok(()) => {
                                        flight.first = Some(run);
                                        a.in_flight = Some(flight);
                                        keys.insert(new_key, ticket);
                                    }
                                    Err(_) => {
                                        // The retry could not start: keep the first run.
                                        let done = page_result(flight.page, flight.image, run, flight.mode, None);
                                        complete_page(shared, a, done);
                                    }
                                }
                                continue;
                            }
                            let done = match flight.first.take() {
                                Some(first) => after_retry(flight.page, flight.image, flight.mode, first, run),
                                None => page_result(flight.page, flight.image, run, flight.mode, None),
                            };
                            complete_page(shared, a, done);
                        }
                        Err(OcrError::Cancelled { .. }) => a.queued.ticket.cancel(),
                        Err(error) if !a.doc.is_pdf() => {
                            let a = active.remove(k);
                            finish(shared, a, Err(error));
                        }
                        Err(error) => {
                            a.doc.result.add_failed(&error);
                            if !a.emit(Event::PageFailed { page: flight.page, error }) {
                                a.queued.ticket.cancel();
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Records a finished page and reports it.
fn complete_page(shared: &Shared, a: &mut Active, done: crate::PageResult) {
    count_page(shared, &done);
    a.doc.result.add(&done);
    if !a.emit(Event::PageDone(Box::new(done))) {
        a.queued.ticket.cancel();
    }
}

/// Removes `ticket`'s pages from the batch.
fn drop_pages(batch: &mut PageBatch<'_>, keys: &mut HashMap<usize, u64>, ticket: u64) {
    let mine: Vec<usize> = keys.iter().filter(|(_, &t)| t == ticket).map(|(&k, _)| k).collect();
    let mut ignored = Vec::new();
    for key in mine {
        keys.remove(&key);
        batch.cancel(key, &mut ignored);
    }
}

fn finish(shared: &Shared, a: Active, result: Result<crate::DocumentResult, OcrError>) {
    shared.running.fetch_sub(1, Ordering::SeqCst);
    finish_job(shared, a.queued.on_done, a.started, result);
}
