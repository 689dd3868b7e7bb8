//! The engine's worker loop with continuous batching ([`EngineOptions::batch`] > 1).
//!
//! Requests are documents, and every page of every active document may decode in the batch
//! at the same time: a PDF of 20 pages fills 20 slots. Each request still sees its events in
//! the order of the document loop (`DocumentStarted`, per page `PageStarted`, `Text`…,
//! `PageDone`): the events of a page wait, held, until every page before it has been
//! delivered, and a page's result enters the document in page order.
//!
//! Between decode steps the loop takes new requests from the channel and fills the free slots
//! round-robin over the active documents (one page of each per round, so one long PDF does not
//! keep a one-page request waiting for a whole round of slots). The pages chosen are admitted in
//! groups of [`ADMIT_GROUP`]: their views go through the encoder together and their prompts of
//! equal length are prefilled together ([`PageBatch::admit_many`]). A document whose page fails
//! (an image), that is cancelled, or whose deadline passes ends alone; a PDF page that fails is
//! reported and the document goes on.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Instant;

use dsocr_input::{Mode, RgbImage};
use dsocr_model::{ModelError, OcrRequest, OcrResult, PageBatch, PageEvent, ADMIT_GROUP};

use crate::document::{after_retry, page_request, page_result, wants_retry, OpenDocument};
use crate::engine::{call_sink, count_page, finish_job, panic_message, Queued, Shared};
use crate::{Event, FinishReason, Ocr, OcrError, PageResult};

/// Where a page of an active document stands.
enum Stage {
    /// In the batch under `key`; `first` holds the first run while its base-mode retry runs.
    Running { key: usize, image: RgbImage, mode: Mode, first: Option<OcrResult> },
    /// Finished; delivered once the pages before it are.
    Done(Box<PageResult>),
    /// Failed (a PDF page); delivered once the pages before it are.
    Failed(OcrError),
    /// Passing from one stage to the next inside [`dispatch`] (never left there).
    Moving,
}

/// A page of an active document that has started.
struct Flight {
    page: usize,
    stage: Stage,
    /// Its events while an earlier page of the document is not delivered yet.
    held: Vec<Event>,
}

/// A request being worked on.
struct Active {
    queued: Queued,
    doc: OpenDocument,
    /// Pages still to start (1-based, in order).
    pending: VecDeque<usize>,
    /// Pages started and not delivered yet, in page order; the first one's events go straight
    /// to the request's sink.
    flights: VecDeque<Flight>,
    started: Instant,
}

impl Active {
    fn id(&self) -> u64 {
        self.queued.ticket.id()
    }

    fn stopped(&self, shared: &Shared) -> bool {
        self.queued.ticket.is_cancelled() || shared.cancel_all.load(Ordering::SeqCst)
    }

    fn timed_out(&self) -> bool {
        self.queued.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Every page started has been delivered and none is left to start.
    fn is_complete(&self) -> bool {
        self.pending.is_empty() && self.flights.is_empty()
    }

    /// Whether a page of this document is in the batch.
    fn in_batch(&self) -> bool {
        self.flights.iter().any(|f| matches!(f.stage, Stage::Running { .. }))
    }

    /// The flight in the batch under `key`.
    fn flight_of(&self, key: usize) -> Option<usize> {
        self.flights.iter().position(|f| matches!(f.stage, Stage::Running { key: k, .. } if k == key))
    }

    /// Hands `event` to the request's sink; a sink that asks to stop cancels the request.
    fn emit(&mut self, event: Event) {
        if call_sink(&mut self.queued.on_event, event).is_break() {
            self.queued.ticket.cancel();
        }
    }

    /// An event of flight `i`: delivered now for the first page not delivered, held otherwise.
    fn send(&mut self, i: usize, event: Event) {
        if i == 0 {
            self.emit(event);
        } else if let Some(flight) = self.flights.get_mut(i) {
            flight.held.push(event);
        }
    }

    /// Delivers the finished pages at the front, in page order: each one's result enters the
    /// document and its `PageDone` / `PageFailed` goes out, then the held events of the page
    /// after it.
    fn deliver(&mut self, shared: &Shared) {
        while !self.queued.ticket.is_cancelled()
            && self.flights.front().is_some_and(|f| !matches!(f.stage, Stage::Running { .. } | Stage::Moving))
        {
            let Some(flight) = self.flights.pop_front() else { break };
            match flight.stage {
                Stage::Done(done) => {
                    count_page(shared, &done);
                    self.doc.result.add(&done);
                    self.emit(Event::PageDone(done));
                }
                Stage::Failed(error) => {
                    self.doc.result.add_failed(&error);
                    self.emit(Event::PageFailed { page: flight.page, error });
                }
                Stage::Running { .. } | Stage::Moving => {}
            }
            if let Some(next) = self.flights.front_mut() {
                let held = std::mem::take(&mut next.held);
                for event in held {
                    self.emit(event);
                }
            }
        }
    }
}

/// A page chosen for admission.
struct Candidate {
    ticket: u64,
    page: usize,
    request: OcrRequest,
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
                drop_pages(&mut batch, &mut keys, a.id());
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

        // Admission: free slots filled round-robin, the pages admitted in groups.
        let chosen = choose(ocr, &mut active, batch.slots().saturating_sub(batch.live()));
        for group in chosen.chunks(ADMIT_GROUP) {
            admit_group(&mut batch, group, &mut active, &mut keys, &mut next_key, &mut events, shared);
        }
        settle(ocr, shared, &mut batch, &mut active, &mut keys, &mut next_key, &mut events);

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
                    if active[k].in_batch() {
                        let a = active.remove(k);
                        let error = OcrError::Panicked { path: a.doc.path.clone(), message: message.clone() };
                        finish(shared, a, Err(error));
                    } else {
                        k += 1;
                    }
                }
                shared.set_live_pages(0);
                continue;
            }
            settle(ocr, shared, &mut batch, &mut active, &mut keys, &mut next_key, &mut events);
        }
        shared.set_live_pages(batch.live());
    }
}

/// Hands the batch's events to their requests, delivers what is ready in page order, and ends
/// the documents that are complete.
#[allow(clippy::too_many_arguments)]
fn settle(
    ocr: &Ocr,
    shared: &Shared,
    batch: &mut PageBatch<'_>,
    active: &mut Vec<Active>,
    keys: &mut HashMap<usize, u64>,
    next_key: &mut usize,
    events: &mut Vec<PageEvent>,
) {
    dispatch(ocr, shared, batch, active, keys, next_key, events);
    shared.set_live_pages(batch.live());
    let mut k = 0;
    while k < active.len() {
        active[k].deliver(shared);
        // A cancelled request is ended by the loop's stop check, not completed here.
        if active[k].is_complete() && !active[k].queued.ticket.is_cancelled() {
            let a = active.remove(k);
            shared.running.fetch_sub(1, Ordering::SeqCst);
            finish_job(shared, a.queued.on_done, a.started, Ok(a.doc.result));
        } else {
            k += 1;
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
    let mut a = Active { queued, doc, pending, flights: VecDeque::new(), started: Instant::now() };
    shared.running.fetch_add(1, Ordering::SeqCst);
    let started = a.doc.content.started(&a.doc.path, a.doc.pages.len());
    a.emit(started);
    active.push(a);
}

/// Chooses up to `room` pages to admit, one page of each active document per round. A PDF
/// page that cannot be rendered becomes a failed page in its place (and takes no slot).
fn choose(ocr: &Ocr, active: &mut [Active], mut room: usize) -> Vec<Candidate> {
    let mut chosen = Vec::new();
    while room > 0 {
        let mut progressed = false;
        for a in active.iter_mut() {
            if room == 0 {
                break;
            }
            if a.queued.ticket.is_cancelled() {
                continue;
            }
            if let Some(candidate) = next_page(ocr, a) {
                chosen.push(candidate);
                room -= 1;
                progressed = true;
            } else if !a.pending.is_empty() {
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    chosen
}

/// Starts the next pending page of `a`: its image rendered, its `Note`s and `PageStarted` sent
/// (held if an earlier page is not delivered yet). `None` when nothing is pending or the page
/// could not be rendered (then it is a failed flight).
fn next_page(ocr: &Ocr, a: &mut Active) -> Option<Candidate> {
    let page = a.pending.pop_front()?;
    let options = &a.queued.job.options;
    let rendered = a.doc.content.images(&a.doc.path, &[page], options.pdf_dpi).next()?;
    let i = a.flights.len();
    match rendered {
        Ok((image, warnings)) => {
            let (mode, pdf) = (options.mode, a.doc.is_pdf());
            // The key is given at admission; until then the flight is marked with an unused one.
            a.flights.push_back(Flight {
                page,
                stage: Stage::Running { key: usize::MAX, image: image.clone(), mode, first: None },
                held: Vec::new(),
            });
            for warning in warnings {
                a.send(i, Event::Note { page, message: format!("renderer: {warning}") });
            }
            a.send(i, Event::PageStarted { page, pages: a.doc.total });
            let options = &a.queued.job.options;
            let request = page_request(&image, mode, &ocr.generation_config(options, pdf), options);
            Some(Candidate { ticket: a.id(), page, request })
        }
        Err(error) => {
            a.flights.push_back(Flight { page, stage: Stage::Failed(error), held: Vec::new() });
            None
        }
    }
}

/// Admits `group` together. A page that cannot start fails: a PDF page alone, an image with
/// its document.
#[allow(clippy::too_many_arguments)]
fn admit_group(
    batch: &mut PageBatch<'_>,
    group: &[Candidate],
    active: &mut Vec<Active>,
    keys: &mut HashMap<usize, u64>,
    next_key: &mut usize,
    events: &mut Vec<PageEvent>,
    shared: &Shared,
) {
    let mut requests = Vec::with_capacity(group.len());
    for candidate in group {
        requests.push((*next_key, &candidate.request));
        *next_key += 1;
    }
    // A panic while admitting (vision, prefill) fails these pages only; the batch is untouched
    // until the new sequences are inserted at the very end.
    let results =
        std::panic::catch_unwind(AssertUnwindSafe(|| batch.admit_many(&requests, events))).unwrap_or_else(|payload| {
            let message = panic_message(&*payload);
            requests.iter().map(|_| Err(ModelError::Input(format!("internal error: {message}")))).collect()
        });
    for ((candidate, (key, _)), result) in group.iter().zip(&requests).zip(results) {
        let Some(k) = active.iter().position(|a| a.id() == candidate.ticket) else { continue };
        let a = &mut active[k];
        let Some(i) = a.flights.iter().position(|f| f.page == candidate.page) else { continue };
        match result {
            Ok(()) => {
                if let Stage::Running { key: slot, .. } = &mut a.flights[i].stage {
                    *slot = *key;
                }
                keys.insert(*key, candidate.ticket);
            }
            Err(source) => page_failed(shared, batch, active, keys, (k, i), source),
        }
    }
}

/// Admits one page alone (a base-mode retry).
fn admit_one(batch: &mut PageBatch<'_>, key: usize, request: &OcrRequest, events: &mut Vec<PageEvent>) -> bool {
    std::panic::catch_unwind(AssertUnwindSafe(|| batch.admit(key, request, events))).is_ok_and(|r| r.is_ok())
}

/// Hands the batch's events to their pages: text pieces, finished pages (with the base-mode
/// retry), failures. Events of a page after the first undelivered one are held.
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
            let found =
                active.iter().position(|a| a.id() == ticket).and_then(|k| active[k].flight_of(key).map(|i| (k, i)));
            let Some((k, i)) = found else {
                keys.remove(&key);
                continue;
            };
            let a = &mut active[k];
            let page = a.flights[i].page;
            match event {
                PageEvent::Text { piece, .. } => {
                    a.send(i, Event::Text { page, piece });
                    if a.queued.ticket.is_cancelled() {
                        batch.cancel(key, events);
                    }
                }
                PageEvent::Done { result, .. } => {
                    keys.remove(&key);
                    let Stage::Running { image, mode, first, .. } =
                        std::mem::replace(&mut a.flights[i].stage, Stage::Moving)
                    else {
                        continue;
                    };
                    let run = match result {
                        Ok(run) if run.finish == FinishReason::Cancelled => {
                            // Ended by the loop's stop check (the stage no longer matters).
                            a.queued.ticket.cancel();
                            continue;
                        }
                        Ok(run) => run,
                        Err(source) => {
                            page_failed(shared, batch, active, keys, (k, i), source);
                            continue;
                        }
                    };
                    let options = a.queued.job.options.clone();
                    if first.is_none() && wants_retry(&options, mode, &run) {
                        let (finish, tokens) = (run.finish, run.generated_tokens());
                        a.send(i, Event::Retrying { page, finish, tokens, mode });
                        let new_key = *next_key;
                        *next_key += 1;
                        let generation = ocr.generation_config(&options, a.doc.is_pdf());
                        let request = page_request(&image, Mode::Base, &generation, &options);
                        if admit_one(batch, new_key, &request, events) {
                            a.flights[i].stage = Stage::Running { key: new_key, image, mode, first: Some(run) };
                            keys.insert(new_key, ticket);
                        } else {
                            // The retry could not start: keep the first run.
                            a.flights[i].stage = Stage::Done(Box::new(page_result(page, image, run, mode, None)));
                        }
                        continue;
                    }
                    let done = match first {
                        Some(first) => after_retry(page, image, mode, first, run),
                        None => page_result(page, image, run, mode, None),
                    };
                    a.flights[i].stage = Stage::Done(Box::new(done));
                }
            }
        }
    }
}

/// Flight `i` of request `k` failed in the model: a PDF page fails alone (delivered in page
/// order); an image has one page, so its failure ends the document.
fn page_failed(
    shared: &Shared,
    batch: &mut PageBatch<'_>,
    active: &mut Vec<Active>,
    keys: &mut HashMap<usize, u64>,
    (k, i): (usize, usize),
    source: ModelError,
) {
    let a = &mut active[k];
    let page = a.flights[i].page;
    let what = a.doc.content.what(&a.doc.name, page, a.doc.total);
    let error = OcrError::Model { path: a.doc.path.clone(), page, what, source: Box::new(source) };
    if a.doc.is_pdf() {
        a.flights[i].stage = Stage::Failed(error);
    } else {
        let a = active.remove(k);
        drop_pages(batch, keys, a.id());
        finish(shared, a, Err(error));
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
