//! The bridge from a request handler to the engine's worker thread: the job is queued, its
//! events and result come back through a tokio channel, and the handle cancels the job when it
//! is dropped (a client that disconnects drops its handler's future or its stream).

use std::ops::ControlFlow;
use std::sync::Arc;

use dsocr::engine::CancelOnDrop;
use dsocr::inputs::InputKind;
use dsocr::{DocumentResult, Event, Job, OcrError};
use tokio::sync::mpsc;

use crate::chat::worker_gone;
use crate::{ApiError, AppState};

/// What comes back from the worker.
pub enum Msg {
    Event(Event),
    Done(Result<DocumentResult, OcrError>),
}

/// A queued job seen from its handler.
pub struct Running {
    pub rx: mpsc::UnboundedReceiver<Msg>,
    guard: Option<CancelOnDrop>,
    state: Arc<AppState>,
}

impl Running {
    /// The next message; `None` only if the worker went away.
    pub async fn next(&mut self) -> Option<Msg> {
        self.rx.recv().await
    }

    /// Waits for the document to open and returns its kind and page count. A document that
    /// cannot be opened (unreadable, too large, a bad page selection) ends here as a plain HTTP
    /// error, before any answer has started.
    pub async fn started(&mut self) -> Result<(InputKind, usize), ApiError> {
        loop {
            match self.next().await {
                Some(Msg::Event(Event::DocumentStarted { kind, pages, .. })) => return Ok((kind, pages)),
                Some(Msg::Event(_)) => {}
                Some(Msg::Done(result)) => {
                    self.finished();
                    return Err(result.err().map(ApiError::from).unwrap_or_else(worker_gone));
                }
                None => return Err(worker_gone()),
            }
        }
    }

    /// The job finished and its answer was produced: dropping no longer counts as a disconnect.
    pub fn finished(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.disarm();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.guard.is_some() {
            // Dropped before the answer was complete: the client went away (or the handler
            // gave up); the guard cancels the job.
            self.state.metrics.record_disconnect();
        }
    }
}

/// Queues `job`; 429 when the queue is full, 503 when shutting down.
pub fn submit(state: &Arc<AppState>, job: Job) -> Result<Running, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let events = tx.clone();
    let on_event = Box::new(move |event: Event| match events.send(Msg::Event(event)) {
        Ok(()) => ControlFlow::Continue(()),
        // Nobody listens any more: stop generating.
        Err(_) => ControlFlow::Break(()),
    });
    let on_done = Box::new(move |result| {
        let _ = tx.send(Msg::Done(result));
    });
    let ticket = state.engine.submit(job, on_event, on_done)?;
    Ok(Running { rx, guard: Some(ticket.cancel_on_drop()), state: state.clone() })
}
