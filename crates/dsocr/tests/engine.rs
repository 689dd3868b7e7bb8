//! The engine's worker thread and queue on the tiny fixture: order, queue limit, cancellation
//! (queued, running, by a dropped guard, by the event sink), deadlines, shutdown.

use std::ops::ControlFlow;
use std::sync::mpsc;
use std::time::Duration;

use dsocr::engine::{DoneSink, EventSink};
use dsocr::{
    Backend, DocumentResult, Engine, EngineOptions, Event, Job, LoadOptions, Mode, Ocr, OcrError, OcrOptions,
    Precision, Source, SubmitError,
};
use dsocr_testkit::fixtures::{fixture_image, reference_tiny};

const WAIT: Duration = Duration::from_secs(120);

fn engine(max_queue: usize) -> Engine {
    let dir = reference_tiny();
    Engine::start(
        move || Ocr::load_dir(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)),
        EngineOptions { max_queue },
    )
    .expect("the fixture model loads")
}

fn job(name: &str, max_new_tokens: usize) -> Job {
    Job {
        source: Source::File(fixture_image("small.png")),
        name: name.to_string(),
        options: OcrOptions {
            mode: Mode::Tiny,
            max_new_tokens,
            repeat_guard: dsocr::RepeatGuardPolicy::off(),
            ..OcrOptions::official()
        },
        timeout: None,
    }
}

fn quiet() -> EventSink {
    Box::new(|_| ControlFlow::Continue(()))
}

/// A done sink that sends `(tag, result)` to `tx`.
fn done_to(tx: &mpsc::Sender<(&'static str, Result<DocumentResult, OcrError>)>, tag: &'static str) -> DoneSink {
    let tx = tx.clone();
    Box::new(move |r| {
        let _ = tx.send((tag, r));
    })
}

/// An event sink that blocks the worker at the page's start until `go` receives.
fn held(go: mpsc::Receiver<()>, started: mpsc::Sender<()>) -> EventSink {
    Box::new(move |event| {
        if matches!(event, Event::PageStarted { .. }) {
            let _ = started.send(());
            let _ = go.recv_timeout(WAIT);
        }
        ControlFlow::Continue(())
    })
}

#[test]
fn requests_run_in_order_and_the_queue_is_bounded() {
    let engine = engine(1);
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    let first = engine.submit(job("first", 3), held(go_rx, started_tx), done_to(&tx, "first")).unwrap();
    started_rx.recv_timeout(WAIT).expect("the first request starts");
    assert_eq!((engine.stats().running, engine.stats().queued), (1, 0));
    let second = engine.submit(job("second", 2), quiet(), done_to(&tx, "second")).unwrap();
    assert_eq!(engine.stats().queued, 1);
    match engine.submit(job("third", 2), quiet(), done_to(&tx, "third")) {
        Err(SubmitError::QueueFull { queued: 1, retry_after }) => assert!(retry_after >= Duration::from_secs(1)),
        other => panic!("expected a full queue, got {other:?}"),
    }
    assert_eq!((first.id(), second.id()), (1, 2));
    go_tx.send(()).unwrap();
    let (tag, r) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((tag, r.unwrap().tokens), ("first", 3));
    let (tag, r) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!((tag, r.unwrap().tokens), ("second", 2));
    let stats = engine.stats();
    assert_eq!((stats.completed, stats.pages, stats.tokens, stats.queued, stats.running), (2, 2, 5, 0, 0));
    assert!(rx.try_recv().is_err(), "the refused request is never answered");
}

#[test]
fn cancellation_deadlines_and_shutdown() {
    let engine = engine(8);
    let (tx, rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let (started_tx, started_rx) = mpsc::channel();
    // Running, then cancelled: it stops at its next token.
    let running = engine.submit(job("running", 500), held(go_rx, started_tx), done_to(&tx, "running")).unwrap();
    started_rx.recv_timeout(WAIT).unwrap();
    // Queued behind it: one cancelled by a dropped guard, one whose deadline passes while it
    // waits, one cancelled by its own event sink, one that runs.
    let dropped = engine.submit(job("dropped", 2), quiet(), done_to(&tx, "dropped")).unwrap();
    drop(dropped.cancel_on_drop());
    let mut late = job("late", 2);
    late.timeout = Some(Duration::from_millis(1));
    engine.submit(late, quiet(), done_to(&tx, "late")).unwrap();
    let by_sink: EventSink =
        Box::new(|e| if matches!(e, Event::Text { .. }) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) });
    engine.submit(job("by-sink", 50), by_sink, done_to(&tx, "by-sink")).unwrap();
    let kept = engine.submit(job("kept", 2), quiet(), done_to(&tx, "kept")).unwrap();
    kept.cancel_on_drop().disarm();
    running.cancel();
    go_tx.send(()).unwrap();

    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let (tag, r) = rx.recv_timeout(WAIT).unwrap();
        outcomes.push((tag, r));
    }
    let tags: Vec<&str> = outcomes.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, ["running", "dropped", "late", "by-sink", "kept"]);
    assert!(matches!(outcomes[0].1, Err(OcrError::Cancelled { .. })), "{:?}", outcomes[0].1);
    assert!(matches!(outcomes[1].1, Err(OcrError::Cancelled { .. })));
    match &outcomes[2].1 {
        Err(e @ OcrError::TimedOut { after, .. }) => {
            assert_eq!(*after, Duration::from_millis(1));
            assert!(e.to_string().contains("deadline"), "{e}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(outcomes[3].1, Err(OcrError::Cancelled { .. })));
    assert_eq!(outcomes[4].1.as_ref().unwrap().tokens, 2);
    let stats = engine.stats();
    assert_eq!((stats.completed, stats.cancelled, stats.timed_out, stats.failed), (1, 3, 1, 0));

    // Shutting down: new requests are refused, the worker ends.
    engine.stop_accepting();
    assert!(matches!(engine.submit(job("after", 2), quiet(), done_to(&tx, "after")), Err(SubmitError::ShuttingDown)));
    engine.shutdown();
}

#[test]
fn a_model_that_does_not_load_is_an_error() {
    let err = Engine::start(
        || Ocr::load_dir("/nonexistent/model".as_ref(), &LoadOptions::new(Backend::Cpu, Precision::F32)),
        EngineOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/model"), "{err}");
}
