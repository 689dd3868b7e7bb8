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
        EngineOptions { max_queue, batch: 1 },
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

/// What a request saw: its event kinds in order (text runs collapsed) and its result.
type Seen = (Vec<String>, Result<(String, Vec<usize>), String>);

fn run_all(batch: usize, jobs: Vec<Job>, cancel_third: bool) -> Vec<Seen> {
    run_all_stats(batch, jobs, cancel_third).0
}

/// [`run_all`] and the engine's counters at the end.
fn run_all_stats(batch: usize, jobs: Vec<Job>, cancel_third: bool) -> (Vec<Seen>, dsocr::EngineStats) {
    let dir = reference_tiny();
    let engine = Engine::start(
        move || Ocr::load_dir(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)),
        EngineOptions { max_queue: 16, batch },
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let n = jobs.len();
    let mut tickets = Vec::new();
    for (k, job) in jobs.into_iter().enumerate() {
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink_events = events.clone();
        let texts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let on_event: EventSink = Box::new(move |e| {
            let name = match &e {
                Event::DocumentStarted { pages, .. } => format!("doc {pages}"),
                Event::PageStarted { page, .. } => format!("start {page}"),
                Event::Text { page, .. } => format!("text {page}"),
                Event::Note { .. } => "note".into(),
                Event::Retrying { page, .. } => format!("retry {page}"),
                Event::PageDone(p) => format!("done {}", p.page),
                Event::PageFailed { page, .. } => format!("failed {page}"),
            };
            let mut v = sink_events.lock().unwrap();
            if v.last() != Some(&name) || !name.starts_with("text") {
                v.push(name);
            }
            let t = texts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if cancel_third && k == 2 && t == 6 {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        let tx = tx.clone();
        let on_done: DoneSink = Box::new(move |r| {
            let r = r
                .map(|d| {
                    (d.document.raw().to_string(), d.document.pages().iter().map(|p| p.generated_tokens).collect())
                })
                .map_err(|e| e.to_string());
            let _ = tx.send((k, events, r));
        });
        tickets.push(engine.submit(job, on_event, on_done).unwrap());
    }
    let mut out: Vec<Option<Seen>> = (0..n).map(|_| None).collect();
    for _ in 0..n {
        let (k, events, r) = rx.recv_timeout(WAIT).expect("every request is answered");
        out[k] = Some((events.lock().unwrap().clone(), r));
    }
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.running, stats.live_pages), (0, 0, 0), "{stats:?}");
    (out.into_iter().map(|o| o.unwrap()).collect(), stats)
}

fn mixed_jobs() -> Vec<Job> {
    let pdf = dsocr_testkit::fixtures::make_pdf_ext(&[Some("One"), None, Some("Three")], 300, 200, false);
    let mut jobs = vec![
        job("a", 9),
        Job { source: Source::Bytes { name: "doc.pdf".into(), bytes: pdf }, ..job("doc", 5) },
        job("c", 30),
        Job { source: Source::Bytes { name: "bad.png".into(), bytes: b"not an image".to_vec() }, ..job("bad", 3) },
        job("e", 2),
    ];
    jobs[2].options.mode = Mode::Base;
    jobs[4].options.retry_in_base_mode = true;
    jobs
}

#[test]
fn batched_requests_give_what_each_gives_alone_in_the_same_event_order() {
    let alone = run_all(1, mixed_jobs(), false);
    let together = run_all(3, mixed_jobs(), false);
    assert_eq!(together, alone);
    // The PDF's middle page fails alone; the bad image fails alone; the retry ran.
    assert!(alone[1].0.contains(&"failed 2".to_string()), "{:?}", alone[1]);
    assert!(alone[3].1.as_ref().is_err_and(|e| e.contains("bad.png")), "{:?}", alone[3]);
    assert!(alone[4].0.contains(&"retry 1".to_string()), "{:?}", alone[4]);
    assert_eq!(alone[0].1.as_ref().unwrap().1, [9]);
}

/// A PDF's pages share the batch (three of its four decode at once, the fourth page fails to
/// render), yet its events and its document are those of the page-by-page loop.
#[test]
fn the_pages_of_one_pdf_decode_together_and_arrive_in_order() {
    let pdf = dsocr_testkit::fixtures::make_pdf_ext(&[Some("One"), Some("Two"), None, Some("Four")], 300, 200, false);
    let jobs = || {
        vec![
            Job { source: Source::Bytes { name: "four.pdf".into(), bytes: pdf.clone() }, ..job("four", 11) },
            job("after", 4),
        ]
    };
    let (alone, alone_stats) = run_all_stats(1, jobs(), false);
    let (together, stats) = run_all_stats(4, jobs(), false);
    assert_eq!(together, alone);
    assert_eq!(alone_stats.peak_live_pages, 1);
    assert!((3..=4).contains(&stats.peak_live_pages), "{stats:?}");
    let events = &alone[0].0;
    let order: Vec<&str> = events.iter().map(String::as_str).filter(|e| !e.starts_with("text")).collect();
    assert_eq!(
        order,
        ["doc 4", "start 1", "done 1", "start 2", "done 2", "failed 3", "start 4", "done 4"],
        "{events:?}"
    );
}

#[test]
fn a_request_cancelled_in_a_batch_ends_alone() {
    let out = run_all(3, mixed_jobs(), true);
    assert!(out[2].1.as_ref().is_err_and(|e| e.contains("cancelled")), "{:?}", out[2]);
    let alone = run_all(1, mixed_jobs(), false);
    for k in [0, 1, 4] {
        assert_eq!(out[k], alone[k], "request {k}");
    }
}

#[test]
fn a_sink_that_panics_fails_its_request_and_the_engine_goes_on() {
    for batch in [1, 3] {
        let dir = reference_tiny();
        let engine = Engine::start(
            move || Ocr::load_dir(&dir, &LoadOptions::new(Backend::Cpu, Precision::F32)),
            EngineOptions { max_queue: 8, batch },
        )
        .unwrap();
        let (tx, rx) = mpsc::channel();
        let panicking: EventSink = Box::new(|e| {
            if matches!(e, Event::Text { .. } | Event::PageDone(_)) {
                panic!("a front end bug");
            }
            ControlFlow::Continue(())
        });
        engine.submit(job("panics", 6), panicking, done_to(&tx, "panics")).unwrap();
        engine.submit(job("after", 3), quiet(), done_to(&tx, "after")).unwrap();
        let mut seen = std::collections::HashMap::new();
        for _ in 0..2 {
            let (tag, r) = rx.recv_timeout(WAIT).expect("both are answered");
            seen.insert(tag, r);
        }
        assert!(seen["panics"].is_err(), "batch {batch}: {:?}", seen["panics"]);
        assert_eq!(seen["after"].as_ref().map(|d| d.tokens).ok(), Some(3), "batch {batch}");
    }
}
