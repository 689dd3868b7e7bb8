//! The engine: one worker thread owns the model (and with it the device); requests arrive
//! through a channel and are run in arrival order. Front ends never touch the model: the server
//! submits each HTTP request here, so requests queue instead of racing for the device, and a
//! request's events reach it through the callback it handed in.
//!
//! - Admission: at most [`EngineOptions::max_queue`] requests wait; beyond that
//!   [`Engine::submit`] answers [`SubmitError::QueueFull`] with an estimate of when to retry.
//! - Cancellation: [`Ticket::cancel`] (or dropping the handle returned by
//!   [`Ticket::cancel_on_drop`]) stops a request, queued or running; a running page stops at
//!   its next generated token. A request's event callback returning `Break` does the same.
//! - Deadline: a request not done within its [`Job::timeout`] of submission ends with
//!   [`OcrError::TimedOut`].
//! - Shutdown: [`Engine::stop_accepting`] refuses new requests and lets the queued ones finish;
//!   [`Engine::cancel_all`] stops everything in flight.
//!
//! - Batching: with [`EngineOptions::batch`] > 1 pages decode together (continuous batching,
//!   `scheduler.rs`): the pages of different requests and the pages of one PDF. A request's
//!   events still come in the order of the document loop (a later page's are held until the
//!   pages before it are delivered). With 1, requests run one at a time, page by page.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{DocumentResult, Event, Ocr, OcrError, OcrOptions, Source};

/// Limits of the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineOptions {
    /// Most requests waiting to start (those running not counted).
    pub max_queue: usize,
    /// Most pages decoding together (continuous batching over requests; 1: one request at a
    /// time, each page alone).
    pub batch: usize,
}

impl EngineOptions {
    /// Pages decoding together unless asked otherwise: 16 on a GPU (one decode step costs
    /// about the same for 1 row as for 16: docs/performance.md, "Continuous batching"), 1 on
    /// the CPU backends, where a step's cost grows with its rows.
    pub fn default_batch(backend: crate::Backend) -> usize {
        if backend.is_gpu() {
            16
        } else {
            1
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_queue: 64, batch: 1 }
    }
}

/// One request: a document and how to run it.
#[derive(Debug, Clone)]
pub struct Job {
    pub source: Source,
    /// Names the figure files the markdown links to.
    pub name: String,
    pub options: OcrOptions,
    /// Give up (queued or running) this long after submission.
    pub timeout: Option<Duration>,
}

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the queue is full ({queued} requests waiting); retry in about {} s", retry_after.as_secs())]
    QueueFull { queued: usize, retry_after: Duration },
    #[error("the engine is shutting down and takes no new requests")]
    ShuttingDown,
}

/// Receives a request's events on the worker thread; `Break` cancels the request.
pub type EventSink = Box<dyn FnMut(Event) -> ControlFlow<()> + Send>;
/// Receives a request's result on the worker thread, once.
pub type DoneSink = Box<dyn FnOnce(Result<DocumentResult, OcrError>) + Send>;

/// A submitted request.
#[derive(Debug, Clone)]
pub struct Ticket {
    id: u64,
    cancelled: Arc<AtomicBool>,
}

impl Ticket {
    /// The request's number (1, 2, … in submission order).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Stops the request: skipped if still queued, stopped at its next token if running.
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// A guard that cancels the request when dropped (unless [`CancelOnDrop::disarm`]ed): what a
    /// front end holds while its client waits, so a client that goes away frees the device.
    pub fn cancel_on_drop(&self) -> CancelOnDrop {
        CancelOnDrop { ticket: Some(self.clone()) }
    }
}

/// See [`Ticket::cancel_on_drop`].
#[derive(Debug)]
pub struct CancelOnDrop {
    ticket: Option<Ticket>,
}

impl CancelOnDrop {
    /// The request has been answered: dropping the guard no longer cancels it.
    pub fn disarm(mut self) {
        self.ticket = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(ticket) = &self.ticket {
            ticket.cancel();
        }
    }
}

/// Counters of the engine, for health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Requests waiting to start.
    pub queued: usize,
    /// Requests running (started and not finished).
    pub running: usize,
    /// Pages being generated now (up to [`EngineOptions::batch`]), and the most at once since
    /// the start.
    pub live_pages: usize,
    pub peak_live_pages: usize,
    /// Requests finished, by outcome.
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub timed_out: u64,
    /// Pages done and tokens generated since the start.
    pub pages: u64,
    pub tokens: u64,
}

pub(crate) struct Queued {
    pub(crate) job: Job,
    pub(crate) deadline: Option<Instant>,
    pub(crate) ticket: Ticket,
    pub(crate) on_event: EventSink,
    pub(crate) on_done: DoneSink,
}

#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) queued: AtomicUsize,
    pub(crate) running: AtomicUsize,
    next_id: AtomicU64,
    accepting: AtomicBool,
    pub(crate) cancel_all: AtomicBool,
    completed: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    timed_out: AtomicU64,
    pub(crate) pages: AtomicU64,
    pub(crate) tokens: AtomicU64,
    live_pages: AtomicUsize,
    peak_live_pages: AtomicUsize,
    /// Moving average of a request's run time, in milliseconds (for `Retry-After`).
    average_ms: AtomicU64,
}

impl Shared {
    /// Records how many pages are being generated now.
    pub(crate) fn set_live_pages(&self, pages: usize) {
        self.live_pages.store(pages, Ordering::SeqCst);
        self.peak_live_pages.fetch_max(pages, Ordering::SeqCst);
    }
}

/// The worker thread and its queue.
pub struct Engine {
    sender: Mutex<Option<mpsc::Sender<Queued>>>,
    shared: Arc<Shared>,
    options: EngineOptions,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("options", &self.options).field("stats", &self.stats()).finish()
    }
}

impl Engine {
    /// Starts the worker thread, which runs `load` (so the model is made on, and stays on, the
    /// thread that uses it), and waits for the load's outcome.
    pub fn start(
        load: impl FnOnce() -> Result<Ocr, OcrError> + Send + 'static,
        options: EngineOptions,
    ) -> Result<Self, OcrError> {
        let shared = Arc::new(Shared { accepting: AtomicBool::new(true), ..Shared::default() });
        let (sender, receiver) = mpsc::channel::<Queued>();
        let (loaded_tx, loaded_rx) = mpsc::channel::<Result<(), OcrError>>();
        let worker_shared = shared.clone();
        let slots = options.batch.max(1);
        let worker = std::thread::Builder::new()
            .name("dsocr-engine".to_string())
            .spawn(move || {
                let ocr = match load() {
                    Ok(ocr) => {
                        let _ = loaded_tx.send(Ok(()));
                        ocr
                    }
                    Err(e) => {
                        let _ = loaded_tx.send(Err(e));
                        return;
                    }
                };
                if slots > 1 {
                    crate::scheduler::run(&ocr, &worker_shared, receiver, slots);
                    return;
                }
                for queued in receiver {
                    worker_shared.queued.fetch_sub(1, Ordering::SeqCst);
                    run_one(&ocr, &worker_shared, queued);
                }
            })
            .map_err(|e| OcrError::Backend(format!("cannot start the engine thread: {e}")))?;
        match loaded_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = worker.join();
                return Err(e);
            }
            Err(_) => {
                let _ = worker.join();
                return Err(OcrError::Backend("the engine thread stopped while loading the model".to_string()));
            }
        }
        Ok(Self { sender: Mutex::new(Some(sender)), shared, options, worker: Mutex::new(Some(worker)) })
    }

    /// Queues `job`. Its events go to `on_event` and its result to `on_done`, both called on
    /// the worker thread (keep them short: hand the data to a channel). `on_done` is called
    /// exactly once for every accepted job, also when it was cancelled or timed out.
    pub fn submit(&self, job: Job, on_event: EventSink, on_done: DoneSink) -> Result<Ticket, SubmitError> {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let queued = self.shared.queued.load(Ordering::SeqCst);
        if queued >= self.options.max_queue {
            return Err(SubmitError::QueueFull { queued, retry_after: self.retry_after(queued) });
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::SeqCst) + 1;
        let ticket = Ticket { id, cancelled: Arc::new(AtomicBool::new(false)) };
        let sender = self.sender.lock().map_err(|_| SubmitError::ShuttingDown)?;
        let sender = sender.as_ref().ok_or(SubmitError::ShuttingDown)?;
        self.shared.queued.fetch_add(1, Ordering::SeqCst);
        let deadline = job.timeout.map(|t| Instant::now() + t);
        if sender.send(Queued { job, deadline, ticket: ticket.clone(), on_event, on_done }).is_err() {
            self.shared.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(ticket)
    }

    /// A guess at when a queue of `queued` requests has room again: the average run time times
    /// the requests ahead, at least a second.
    fn retry_after(&self, queued: usize) -> Duration {
        let average = Duration::from_millis(self.shared.average_ms.load(Ordering::Relaxed).max(1000));
        let ahead = (queued.saturating_sub(self.options.max_queue) + 1) as u32;
        Duration::from_secs((average * ahead).as_secs().clamp(1, 3600))
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    pub fn stats(&self) -> EngineStats {
        let s = &self.shared;
        let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
        EngineStats {
            queued: s.queued.load(Ordering::SeqCst),
            running: s.running.load(Ordering::SeqCst),
            live_pages: s.live_pages.load(Ordering::SeqCst),
            peak_live_pages: s.peak_live_pages.load(Ordering::SeqCst),
            completed: load(&s.completed),
            failed: load(&s.failed),
            cancelled: load(&s.cancelled),
            timed_out: load(&s.timed_out),
            pages: load(&s.pages),
            tokens: load(&s.tokens),
        }
    }

    /// New requests are refused with [`SubmitError::ShuttingDown`]; queued ones still run.
    pub fn stop_accepting(&self) {
        self.shared.accepting.store(false, Ordering::SeqCst);
    }

    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::SeqCst)
    }

    /// Stops accepting and cancels every request, queued or running.
    pub fn cancel_all(&self) {
        self.stop_accepting();
        self.shared.cancel_all.store(true, Ordering::SeqCst);
    }

    /// Stops accepting, lets the queue drain (or be cancelled by [`cancel_all`](Self::cancel_all))
    /// and waits for the worker thread to end.
    pub fn shutdown(&self) {
        self.stop_accepting();
        if let Ok(mut sender) = self.sender.lock() {
            sender.take();
        }
        let worker = self.worker.lock().ok().and_then(|mut w| w.take());
        if let Some(worker) = worker {
            let _ = worker.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.cancel_all();
        self.shutdown();
    }
}

/// Runs one request on the worker thread and hands over its result.
fn run_one(ocr: &Ocr, shared: &Shared, queued: Queued) {
    let Queued { job, deadline, ticket, mut on_event, on_done } = queued;
    let path = job.source.path();
    let started = Instant::now();
    let timeout = job.timeout.unwrap_or_default();
    let timed_out = || deadline.is_some_and(|d| Instant::now() >= d);
    let stopped = || ticket.is_cancelled() || shared.cancel_all.load(Ordering::SeqCst);

    let result = if stopped() {
        Err(OcrError::Cancelled { path: path.clone() })
    } else if timed_out() {
        Err(OcrError::TimedOut { path: path.clone(), after: timeout })
    } else {
        shared.running.fetch_add(1, Ordering::SeqCst);
        shared.set_live_pages(1);
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            ocr.run(job.source, &job.name, &job.options, |event| {
                if let Event::PageDone(page) = &event {
                    count_page(shared, page);
                }
                if stopped() || timed_out() {
                    return ControlFlow::Break(());
                }
                call_sink(&mut on_event, event)
            })
        }));
        shared.running.fetch_sub(1, Ordering::SeqCst);
        shared.set_live_pages(0);
        run.unwrap_or_else(|payload| Err(OcrError::Panicked { path: path.clone(), message: panic_message(&*payload) }))
    };
    // A stop caused by the deadline reads as such, not as a cancellation.
    let result = match result {
        Err(OcrError::Cancelled { path }) if timed_out() && !stopped() => {
            Err(OcrError::TimedOut { path, after: timeout })
        }
        other => other,
    };
    finish_job(shared, on_done, started, result);
}

/// Counts a finished request (and its run time, for `Retry-After`) and hands over its result.
pub(crate) fn finish_job(
    shared: &Shared,
    on_done: DoneSink,
    started: Instant,
    result: Result<DocumentResult, OcrError>,
) {
    let counter = match &result {
        Ok(_) => &shared.completed,
        Err(OcrError::Cancelled { .. }) => &shared.cancelled,
        Err(OcrError::TimedOut { .. }) => &shared.timed_out,
        Err(_) => &shared.failed,
    };
    counter.fetch_add(1, Ordering::SeqCst);
    if result.is_ok() {
        let ms = started.elapsed().as_millis() as u64;
        let old = shared.average_ms.load(Ordering::Relaxed);
        let new = if old == 0 { ms } else { (old * 7 + ms) / 8 };
        shared.average_ms.store(new, Ordering::Relaxed);
    }
    // A panicking sink must not take the engine's thread down.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(move || on_done(result)));
}

/// Hands `event` to a request's sink; a sink that panics stops its request (`Break`).
pub(crate) fn call_sink(sink: &mut EventSink, event: Event) -> ControlFlow<()> {
    std::panic::catch_unwind(AssertUnwindSafe(|| sink(event))).unwrap_or(ControlFlow::Break(()))
}

pub(crate) use dsocr_input::panic_message;

/// Counts a page done.
pub(crate) fn count_page(shared: &Shared, page: &crate::PageResult) {
    shared.pages.fetch_add(1, Ordering::Relaxed);
    shared.tokens.fetch_add(page.tokens_spent() as u64, Ordering::Relaxed);
}
