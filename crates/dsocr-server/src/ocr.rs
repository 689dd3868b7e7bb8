//! `POST /v1/ocr`: a multipart upload of one image or PDF.
//!
//! Fields: `file` (required: the image or PDF), and optionally `task` (markdown, ocr, free,
//! figure, describe, locate:<text>) or `prompt` (raw, with `<image>`), `mode`, `max_crops`,
//! `max_new_tokens`, `pages` (`1-3,5`), `dpi`, `repeat_guard` (true/false), `ngram_size`,
//! `ngram_window`, `retry_loops`, `format` (`json`: the document JSON the CLI writes, the
//! default; `md`, `txt`, `raw`), `stream` (true: server-sent events per page and per text
//! piece) and `page_images` (true: each streamed `page` event carries the page image as a JPEG
//! data URL, which the web page draws the boxes on).
//!
//! Stream events: `document` `{name, kind, pages}`, `page_started` `{page, pages}`, `text`
//! `{page, text}`, `note`, `retrying`, `page` (the page's JSON entry, plus `image`), `page_failed`
//! `{page, error}`, then `done` `{document, markdown}` or `error` `{error}`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::multipart::{Multipart, MultipartError, MultipartRejection};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use dsocr::inputs::InputKind;
use dsocr::render::{safe_stem, Document, DocumentKind};
use dsocr::{Event, Job, OcrOptions, PageSelection, PromptChoice, Source};
use futures_util::stream::{self, Stream};
use serde_json::{json, Value};

use crate::chat::{apply_common, apply_guard, parse_task, worker_gone};
use crate::submit::{submit, Msg, Running};
use crate::{ApiError, AppState};

/// The answer's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Md,
    Txt,
    Raw,
}

/// The fields of an upload.
#[derive(Default)]
struct Form {
    file: Option<(String, Vec<u8>)>,
    task: Option<String>,
    prompt: Option<String>,
    mode: Option<String>,
    max_crops: Option<usize>,
    max_new_tokens: Option<u64>,
    pages: Option<PageSelection>,
    dpi: Option<f32>,
    repeat_guard: Option<bool>,
    ngram_size: Option<usize>,
    ngram_window: Option<usize>,
    retry_loops: Option<bool>,
    format: Option<Format>,
    stream: bool,
    page_images: bool,
}

pub async fn upload(State(state): State<Arc<AppState>>, multipart: Result<Multipart, MultipartRejection>) -> Response {
    match run(state, multipart).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(state: Arc<AppState>, multipart: Result<Multipart, MultipartRejection>) -> Result<Response, ApiError> {
    let multipart = multipart
        .map_err(|e| ApiError::invalid(format!("expected a multipart/form-data upload with a `file` field: {e}")))?;
    let form = read_form(multipart).await?;
    let (file_name, bytes) = form.file.clone().ok_or_else(|| ApiError::invalid("the `file` field is missing"))?;
    if bytes.is_empty() {
        return Err(ApiError::invalid(format!("{file_name}: the uploaded file is empty")));
    }
    let options = options(&state, &form)?;
    let format = form.format.unwrap_or(Format::Json);
    let name = safe_stem(&file_name);
    let job = Job {
        source: Source::Bytes { name: file_name, bytes },
        name: name.clone(),
        options: options.clone(),
        timeout: Some(state.options.timeout),
    };
    let mut running = submit(&state, job)?;
    let (kind, pages) = running.started().await?;
    let pdf = kind == InputKind::Pdf;
    let doc_kind = if pdf { DocumentKind::Pdf { dpi: options.pdf_dpi } } else { DocumentKind::Image };
    if form.stream {
        let first = json!({ "name": name, "kind": if pdf { "pdf" } else { "image" }, "pages": pages });
        let events = events(running, Document::new(&name, doc_kind), form.page_images, first);
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let result = loop {
        match running.next().await {
            Some(Msg::Done(result)) => break result,
            Some(Msg::Event(_)) => {}
            None => return Err(worker_gone()),
        }
    };
    running.finished();
    let doc = result?;
    let text = |ct: &'static str, body: &str| ([(header::CONTENT_TYPE, ct)], body.to_string()).into_response();
    Ok(match format {
        Format::Json => Json(doc.document.to_json()).into_response(),
        Format::Md => text("text/markdown; charset=utf-8", doc.markdown()),
        Format::Txt => text("text/plain; charset=utf-8", doc.text()),
        Format::Raw => text("text/plain; charset=utf-8", doc.document.raw()),
    })
}

/// The request's options: the official ones, the fields on top, the server's limits.
fn options(state: &AppState, form: &Form) -> Result<OcrOptions, ApiError> {
    let mut options = OcrOptions {
        max_image_pixels: Some(state.options.max_image_pixels),
        max_pages: Some(state.options.max_pages),
        pages: form.pages.clone(),
        ..OcrOptions::official()
    };
    options.prompt = match (&form.task, &form.prompt) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give either `task` or `prompt`, not both")),
        (Some(task), None) => PromptChoice::Task(parse_task(task)?),
        (None, Some(prompt)) => {
            PromptChoice::raw(prompt.clone()).map_err(|e| ApiError::invalid(format!("prompt: {e}")))?
        }
        (None, None) => PromptChoice::Task(OcrOptions::OFFICIAL_TASK),
    };
    apply_common(&mut options, state, form.mode.as_deref(), form.max_crops, form.max_new_tokens)?;
    apply_guard(&mut options, form.repeat_guard, form.ngram_size, form.ngram_window);
    if let Some(dpi) = form.dpi {
        options.pdf_dpi = dpi;
    }
    options.retry_in_base_mode = form.retry_loops.unwrap_or(false);
    options.validate().map_err(ApiError::invalid)?;
    Ok(options)
}

async fn read_form(mut multipart: Multipart) -> Result<Form, ApiError> {
    let mut form = Form::default();
    while let Some(field) = multipart.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            if form.file.is_some() {
                return Err(ApiError::invalid("only one `file` per request"));
            }
            let file_name = field.file_name().map(str::to_string).unwrap_or_else(|| "upload".to_string());
            let bytes = field.bytes().await.map_err(multipart_error)?;
            form.file = Some((file_name, bytes.to_vec()));
            continue;
        }
        let value = field.text().await.map_err(multipart_error)?;
        let value = value.trim().to_string();
        let number =
            |v: &str| v.parse::<usize>().map_err(|_| ApiError::invalid(format!("{name}: `{v}` is not a whole number")));
        let boolean = |v: &str| match v {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ApiError::invalid(format!("{name}: `{v}` is not true or false"))),
        };
        match name.as_str() {
            "task" => form.task = Some(value),
            "prompt" => form.prompt = Some(value.replace("\\n", "\n")),
            "mode" => form.mode = Some(value),
            "max_crops" => form.max_crops = Some(number(&value)?),
            "max_new_tokens" | "max_tokens" => form.max_new_tokens = Some(number(&value)? as u64),
            "pages" => form.pages = Some(value.parse().map_err(|e: String| ApiError::invalid(format!("pages: {e}")))?),
            "dpi" => {
                form.dpi =
                    Some(value.parse().map_err(|_| ApiError::invalid(format!("dpi: `{value}` is not a number")))?)
            }
            "repeat_guard" => form.repeat_guard = Some(boolean(&value)?),
            "ngram_size" => form.ngram_size = Some(number(&value)?),
            "ngram_window" => form.ngram_window = Some(number(&value)?),
            "retry_loops" => form.retry_loops = Some(boolean(&value)?),
            "stream" => form.stream = boolean(&value)?,
            "page_images" => form.page_images = boolean(&value)?,
            "format" => {
                form.format = Some(match value.as_str() {
                    "json" => Format::Json,
                    "md" | "markdown" => Format::Md,
                    "txt" | "text" => Format::Txt,
                    "raw" => Format::Raw,
                    other => {
                        return Err(ApiError::invalid(format!("format: `{other}` (expected json, md, txt or raw)")))
                    }
                })
            }
            other => return Err(ApiError::invalid(format!("unknown field `{other}`"))),
        }
    }
    Ok(form)
}

fn multipart_error(e: MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("the upload is larger than the server's limit: {}", e.body_text()))
    } else {
        ApiError::invalid(format!("malformed multipart upload: {}", e.body_text()))
    }
}

/// The page image as a JPEG data URL.
fn image_url(image: &dsocr::RgbImage) -> Option<String> {
    let jpeg = dsocr::render::draw::encode_jpeg(image, 85).ok()?;
    Some(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg)))
}

/// The event stream of an upload.
fn events(
    running: Running,
    doc: Document,
    page_images: bool,
    first: Value,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        running: Running,
        doc: Document,
        page_images: bool,
        pending: std::collections::VecDeque<(&'static str, String)>,
        ended: bool,
    }
    let mut st = St { running, doc, page_images, pending: Default::default(), ended: false };
    st.pending.push_back(("document", first.to_string()));
    stream::unfold(st, |mut st| async move {
        loop {
            if let Some((name, data)) = st.pending.pop_front() {
                return Some((Ok(SseEvent::default().event(name).data(data)), st));
            }
            if st.ended {
                return None;
            }
            let event = match st.running.next().await {
                Some(Msg::Event(event)) => event,
                Some(Msg::Done(result)) => {
                    st.running.finished();
                    st.ended = true;
                    match result {
                        Ok(doc) => {
                            let done = json!({ "document": doc.document.to_json(), "markdown": doc.markdown() });
                            st.pending.push_back(("done", done.to_string()));
                        }
                        Err(e) => st.pending.push_back(("error", ApiError::from(e).body().to_string())),
                    }
                    continue;
                }
                None => {
                    st.ended = true;
                    st.pending.push_back(("error", worker_gone().body().to_string()));
                    continue;
                }
            };
            match event {
                Event::PageStarted { page, pages } => {
                    st.pending.push_back(("page_started", json!({ "page": page, "pages": pages }).to_string()))
                }
                Event::Text { page, piece } => {
                    st.pending.push_back(("text", json!({ "page": page, "text": piece }).to_string()))
                }
                Event::Note { page, message } => {
                    st.pending.push_back(("note", json!({ "page": page, "message": message }).to_string()))
                }
                Event::Retrying { page, finish, tokens, mode } => st.pending.push_back((
                    "retrying",
                    json!({ "page": page, "finish_reason": finish.as_str(), "tokens": tokens, "mode": mode.name() })
                        .to_string(),
                )),
                Event::PageDone(page) => {
                    st.doc.set_next_page(page.page);
                    let mut json = match st.doc.add_page(page.generated()) {
                        Ok(json) => serde_json::to_value(json).unwrap_or(Value::Null),
                        Err(e) => json!({ "page": page.page, "error": e.to_string() }),
                    };
                    if st.page_images {
                        if let Some(url) = image_url(&page.image) {
                            json["image"] = json!(url);
                        }
                    }
                    st.pending.push_back(("page", json.to_string()));
                }
                Event::PageFailed { page, error } => {
                    st.doc.set_next_page(page);
                    let _ = st.doc.add_failed(error.page_reason());
                    st.pending
                        .push_back(("page_failed", json!({ "page": page, "error": error.page_reason() }).to_string()));
                }
                Event::DocumentStarted { .. } => {}
            }
        }
    })
}
