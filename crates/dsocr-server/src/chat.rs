//! `POST /v1/chat/completions`, the OpenAI shape.
//!
//! The last `user` message holds the request: its text parts are the prompt and its one
//! `image_url` part (a `data:image/...;base64,` URL; the server fetches nothing) is the image,
//! placed where the text has `<image>`, or first. An empty text asks the official markdown task.
//! `max_tokens` (or `max_completion_tokens`) is capped by the server's `--max-new-tokens`.
//! `finish_reason` is `stop` only when the model said EOS and `length` otherwise (the token
//! limit or a repetition stop), with dsocr's own reason in `dsocr_finish_reason`.
//!
//! dsocr's options go in an extension object:
//! `"dsocr": {"task": "ocr", "mode": "base", "max_crops": 6, "repeat_guard": true,
//! "ngram_size": 30, "ngram_window": 90, "output": "raw" | "markdown" | "text"}`.
//! With `stream: true` the answer is `chat.completion.chunk` events (each piece valid UTF-8),
//! then `data: [DONE]`; `stream_options.include_usage` adds a last chunk with the usage.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use dsocr::render::LiveCleaner;
use dsocr::{Event, FinishReason, Job, OcrOptions, PageResult, PromptChoice, RepeatGuardPolicy, Source, Task};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::submit::{submit, Msg, Running};
use crate::{unix_now, ApiError, AppState};

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<u64>,
    #[serde(default)]
    pub dsocr: Option<DsocrOptions>,
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ImageUrl {
    Url(String),
    Object { url: String },
}

impl ImageUrl {
    fn url(&self) -> &str {
        match self {
            ImageUrl::Url(url) | ImageUrl::Object { url } => url,
        }
    }
}

/// What the answer's content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The model's output as generated (grounding tags and special tokens kept).
    #[default]
    Raw,
    /// Cleaned markdown (tags removed), as the CLI's `.mmd`.
    Markdown,
    /// Plain text.
    Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DsocrOptions {
    pub task: Option<String>,
    pub mode: Option<String>,
    pub max_crops: Option<usize>,
    pub repeat_guard: Option<bool>,
    pub ngram_size: Option<usize>,
    pub ngram_window: Option<usize>,
    pub retry_in_base_mode: Option<bool>,
    #[serde(default)]
    pub output: Output,
}

/// A parsed request: what to run and how to answer.
struct Parsed {
    job: Job,
    stream: bool,
    include_usage: bool,
    output: Output,
}

pub async fn completions(State(state): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match run(state, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run(state: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let request: ChatRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid chat completion request: {e}")))?;
    let parsed = parse(&state, request)?;
    let mut running = submit(&state, parsed.job)?;
    let id = format!("chatcmpl-{:x}{:x}", unix_now(), next_id());
    running.started().await?;
    let model = state.options.model_id.clone();
    if parsed.stream {
        let stream = chunks(running, id, model, parsed.output, parsed.include_usage);
        return Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response());
    }
    let mut page = None;
    let result = loop {
        match running.next().await {
            Some(Msg::Done(result)) => break result,
            Some(Msg::Event(Event::PageDone(done))) => page = Some(done),
            Some(Msg::Event(_)) => {}
            None => return Err(worker_gone()),
        }
    };
    running.finished();
    let doc = result?;
    let page = page.ok_or_else(worker_gone)?;
    let content = match parsed.output {
        Output::Raw => page.raw.clone(),
        Output::Markdown => doc.markdown().to_string(),
        Output::Text => doc.text().to_string(),
    };
    let mut choice = json!({
        "index": 0,
        "message": { "role": "assistant", "content": content },
        "finish_reason": openai_finish(page.finish),
        "dsocr_finish_reason": page.finish.as_str(),
    });
    if let Some(other) = page.other_run {
        choice["dsocr_retry"] =
            json!({ "mode": other.mode.name(), "finish_reason": other.finish.as_str(), "tokens": other.tokens });
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "choices": [choice],
        "usage": usage(&page),
        "dsocr": page_facts(&page),
    }))
    .into_response())
}

fn usage(page: &PageResult) -> Value {
    json!({
        "prompt_tokens": page.prompt_tokens,
        "completion_tokens": page.generated_tokens,
        "total_tokens": page.prompt_tokens + page.generated_tokens,
    })
}

/// What dsocr adds to the answer: the image size the boxes refer to, the mode and timings.
fn page_facts(page: &PageResult) -> Value {
    json!({
        "width": page.image.width(),
        "height": page.image.height(),
        "mode": page.mode.name(),
        "vision_ms": page.vision_time.as_millis() as u64,
        "generation_ms": page.generation_time.as_millis() as u64,
    })
}

/// OpenAI's reason: `stop` only on EOS.
fn openai_finish(finish: FinishReason) -> &'static str {
    if finish == FinishReason::Stop {
        "stop"
    } else {
        "length"
    }
}

/// A number per answer, for unique completion ids.
fn next_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

pub(crate) fn worker_gone() -> ApiError {
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "server_error", "the engine stopped")
}

/// A body the extractor refused: too large is 413, the rest 400.
pub(crate) fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(format!("the request body is larger than the server's limit ({e})"))
    } else {
        ApiError::invalid(format!("cannot read the request body: {e}"))
    }
}

fn parse(state: &AppState, request: ChatRequest) -> Result<Parsed, ApiError> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid("n: only one choice per request is supported"));
    }
    let (index, message) = request
        .messages
        .iter()
        .enumerate()
        .rev()
        .find(|(_, m)| m.role == "user")
        .ok_or_else(|| ApiError::invalid("messages: there is no `user` message"))?;
    let mut texts = Vec::new();
    let mut image: Option<(String, Vec<u8>)> = None;
    match &message.content {
        None => {}
        Some(Content::Text(text)) => texts.push(text.clone()),
        Some(Content::Parts(parts)) => {
            for (k, part) in parts.iter().enumerate() {
                let at = format!("messages[{index}].content[{k}]");
                match part {
                    Part::Text { text } => texts.push(text.clone()),
                    Part::ImageUrl { image_url } => {
                        if image.is_some() {
                            return Err(ApiError::invalid(format!("{at}: only one image per request is supported")));
                        }
                        image = Some(decode_data_url(image_url.url(), &at)?);
                    }
                }
            }
        }
    }
    let (name, bytes) = image.ok_or_else(|| {
        ApiError::invalid(format!("messages[{index}]: no image: add an `image_url` part with a data: URL"))
    })?;
    let ext = request.dsocr.unwrap_or_default();
    let mut options = OcrOptions { max_image_pixels: Some(state.options.max_image_pixels), ..OcrOptions::official() };
    let text = texts.join("\n");
    options.prompt = match (&ext.task, text.trim().is_empty()) {
        (Some(_), false) => return Err(ApiError::invalid("give either a text prompt or dsocr.task, not both")),
        (Some(task), true) => PromptChoice::Task(parse_task(task)?),
        (None, true) => PromptChoice::Task(OcrOptions::OFFICIAL_TASK),
        (None, false) if text.contains("<image>") => PromptChoice::raw(text).map_err(ApiError::invalid)?,
        (None, false) => PromptChoice::raw(format!("<image>\n{text}")).map_err(ApiError::invalid)?,
    };
    apply_common(
        &mut options,
        state,
        ext.mode.as_deref(),
        ext.max_crops,
        request.max_completion_tokens.or(request.max_tokens),
    )?;
    apply_guard(&mut options, ext.repeat_guard, ext.ngram_size, ext.ngram_window);
    options.retry_in_base_mode = ext.retry_in_base_mode.unwrap_or(false);
    options.validate().map_err(ApiError::invalid)?;
    let job = Job {
        source: Source::Bytes { name, bytes },
        name: "image".to_string(),
        options,
        timeout: Some(state.options.timeout),
    };
    let include_usage = request.stream_options.is_some_and(|o| o.include_usage);
    Ok(Parsed { job, stream: request.stream, include_usage, output: ext.output })
}

pub(crate) fn parse_task(task: &str) -> Result<Task, ApiError> {
    task.parse().map_err(|e: dsocr::input::PromptError| ApiError::invalid(format!("task: {e}")))
}

/// Mode, tiles and token limit, shared with `/v1/ocr`.
pub(crate) fn apply_common(
    options: &mut OcrOptions,
    state: &AppState,
    mode: Option<&str>,
    max_crops: Option<usize>,
    max_tokens: Option<u64>,
) -> Result<(), ApiError> {
    if let Some(mode) = mode {
        options.mode = mode.parse().map_err(|e: dsocr::input::PromptError| ApiError::invalid(format!("mode: {e}")))?;
    }
    if let Some(max_crops) = max_crops {
        options.max_crops = max_crops;
    }
    let limit = state.options.max_new_tokens;
    options.max_new_tokens = match max_tokens {
        Some(0) => return Err(ApiError::invalid("max_tokens must be at least 1")),
        Some(n) => (n.min(limit as u64)) as usize,
        None => limit,
    };
    Ok(())
}

/// The repeat guard: off, or the official rules with `n`/`window` replaced.
pub(crate) fn apply_guard(options: &mut OcrOptions, on: Option<bool>, n: Option<usize>, window: Option<usize>) {
    options.repeat_guard =
        if on == Some(false) { RepeatGuardPolicy::off() } else { RepeatGuardPolicy::official_with(n, window) };
}

/// `data:<mime>;base64,<data>` → a name for messages (`<at>.<ext>`) and the bytes.
fn decode_data_url(url: &str, at: &str) -> Result<(String, Vec<u8>), ApiError> {
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(ApiError::invalid(format!(
            "{at}: only data: URLs are accepted (the server fetches nothing); send the image as data:image/png;base64,..."
        )));
    };
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| ApiError::invalid(format!("{at}: malformed data: URL (no comma before the data)")))?;
    let Some(mime) = meta.strip_suffix(";base64") else {
        return Err(ApiError::invalid(format!("{at}: the data: URL must be base64-encoded (`;base64,`)")));
    };
    if !(mime.is_empty() || mime.starts_with("image/")) {
        return Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
            format!("{at}: `{mime}` is not an image type (PDFs go to POST /v1/ocr)"),
        ));
    }
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| ApiError::invalid(format!("{at}: the image is not valid base64: {e}")))?;
    let ext = mime.strip_prefix("image/").unwrap_or("img");
    Ok((format!("{at}.{ext}"), bytes))
}

/// The streamed answer: a first chunk with the role, one per piece, the last with the finish
/// reason, the usage when asked, then `[DONE]`.
fn chunks(
    running: Running,
    id: String,
    model: String,
    output: Output,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct St {
        running: Running,
        id: String,
        model: String,
        cleaner: Option<LiveCleaner>,
        include_usage: bool,
        pending: std::collections::VecDeque<String>,
        ended: bool,
    }
    let cleaner = match output {
        Output::Raw => None,
        Output::Markdown | Output::Text => Some(LiveCleaner::new(None)),
    };
    let chunk = |st: &St, delta: Value, finish: Value, extra: Option<(&str, Value)>| {
        let mut choice = json!({ "index": 0, "delta": delta, "finish_reason": finish });
        if let Some((k, v)) = extra {
            choice[k] = v;
        }
        json!({ "id": st.id, "object": "chat.completion.chunk", "created": unix_now(), "model": st.model, "choices": [choice] })
            .to_string()
    };
    let mut st = St { running, id, model, cleaner, include_usage, pending: Default::default(), ended: false };
    let first = chunk(&st, json!({ "role": "assistant", "content": "" }), Value::Null, None);
    st.pending.push_back(first);
    stream::unfold(st, move |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok(SseEvent::default().data(data)), st));
            }
            if st.ended {
                return None;
            }
            match st.running.next().await {
                Some(Msg::Event(Event::Text { piece, .. })) => {
                    let piece = match st.cleaner.as_mut() {
                        Some(c) => c.push(&piece),
                        None => piece,
                    };
                    if !piece.is_empty() {
                        let c = chunk(&st, json!({ "content": piece }), Value::Null, None);
                        st.pending.push_back(c);
                    }
                }
                Some(Msg::Event(Event::Retrying { .. })) => {
                    // The retry's text replaces nothing already sent: say so in the stream.
                    let c = chunk(&st, json!({ "content": "" }), Value::Null, Some(("dsocr_retrying", json!(true))));
                    st.pending.push_back(c);
                }
                Some(Msg::Event(Event::PageDone(page))) => {
                    if let Some(rest) = st.cleaner.as_mut().map(|c| c.finish()).filter(|r| !r.is_empty()) {
                        let c = chunk(&st, json!({ "content": rest }), Value::Null, None);
                        st.pending.push_back(c);
                    }
                    let reason = ("dsocr_finish_reason", json!(page.finish.as_str()));
                    let c = chunk(&st, json!({}), json!(openai_finish(page.finish)), Some(reason));
                    st.pending.push_back(c);
                    if st.include_usage {
                        let u = json!({ "id": st.id, "object": "chat.completion.chunk", "created": unix_now(),
                            "model": st.model, "choices": [], "usage": usage(&page) });
                        st.pending.push_back(u.to_string());
                    }
                }
                Some(Msg::Event(_)) => {}
                Some(Msg::Done(result)) => {
                    st.running.finished();
                    if let Err(e) = result {
                        st.pending.push_back(ApiError::from(e).body().to_string());
                    }
                    st.pending.push_back("[DONE]".to_string());
                    st.ended = true;
                }
                None => {
                    st.pending.push_back(worker_gone().body().to_string());
                    st.pending.push_back("[DONE]".to_string());
                    st.ended = true;
                }
            }
        }
    })
}
