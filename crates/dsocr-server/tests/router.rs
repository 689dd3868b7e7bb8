//! The routes in process (no socket): answers, streams, limits, auth, malformed requests,
//! cancellation when the client goes away. On the tiny fixture: the scripted model (a box and
//! EOS) where the answer's content matters, the random one where only its shape does.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use base64::Engine as _;
use dsocr::{Backend, Engine, EngineOptions, LoadOptions, Ocr, Precision};
use dsocr_server::{router, AppState, ServerOptions};
use dsocr_testkit::fixtures::{fixture_image, make_pdf, reference_tiny};
use dsocr_testkit::scripted::{self, OCR_SCRIPT, OCR_SCRIPT_TEXT, SCRIPT_GUARD};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The scripted model, written once per test process.
fn scripted_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dsocr-server-scripted-{}", std::process::id()));
        scripted::write(&dir, OCR_SCRIPT).expect("scripted model")
    })
    .clone()
}

struct Server {
    app: Router,
    state: Arc<AppState>,
}

fn server_with(model: std::path::PathBuf, options: ServerOptions, max_queue: usize) -> Server {
    batched_server(model, options, max_queue, 1)
}

fn batched_server(model: std::path::PathBuf, options: ServerOptions, max_queue: usize, batch: usize) -> Server {
    let engine = Engine::start(
        move || Ocr::load_dir(&model, &LoadOptions::new(Backend::Cpu, Precision::F32)),
        EngineOptions { max_queue, batch },
    )
    .expect("engine");
    let state = AppState::new(Arc::new(engine), options);
    Server { app: router(state.clone()).expect("router"), state }
}

fn scripted_server() -> Server {
    server_with(scripted_dir(), ServerOptions::default(), 8)
}

fn random_server() -> Server {
    server_with(reference_tiny(), ServerOptions::default(), 8)
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes().to_vec();
    (status, headers, body)
}

async fn json_of(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let (status, _, body) = send(app, request).await;
    let value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&body) }));
    (status, value)
}

fn post_json(path: &str, body: &Value) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

fn data_url(path: &std::path::Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// A chat request with the page image and the scripted model's guard.
fn chat(text: &str, stream: bool) -> Value {
    json!({
        "model": "dsocr",
        "stream": stream,
        "stream_options": { "include_usage": true },
        "messages": [
            { "role": "system", "content": "ignored" },
            { "role": "user", "content": [
                { "type": "image_url", "image_url": { "url": data_url(&fixture_image("page.png")) } },
                { "type": "text", "text": text },
            ]},
        ],
        "dsocr": { "ngram_size": SCRIPT_GUARD.0, "ngram_window": SCRIPT_GUARD.1 },
    })
}

/// A multipart body with a `file` and text fields.
fn multipart(file: Option<(&str, &[u8])>, fields: &[(&str, &str)]) -> Request<Body> {
    let boundary = "dsocr-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").bytes(),
        );
    }
    if let Some((name, bytes)) = file {
        body.extend(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").bytes());
    Request::post("/v1/ocr")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap()
}

/// `(event, data)` pairs of an SSE body.
fn sse(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8(body.to_vec()).expect("UTF-8 stream");
    text.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .filter_map(|block| {
            let mut event = "message".to_string();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_string();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
                }
            }
            (!data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}

fn guard_fields() -> [(&'static str, String); 2] {
    [("ngram_size", SCRIPT_GUARD.0.to_string()), ("ngram_window", SCRIPT_GUARD.1.to_string())]
}

#[tokio::test]
async fn chat_completion_with_an_image_answers_the_model_output_and_an_honest_finish_reason() {
    let s = scripted_server();
    let (status, body) = json_of(&s.app, post_json("/v1/chat/completions", &chat("", false))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["content"], OCR_SCRIPT_TEXT);
    assert_eq!(
        (choice["finish_reason"].as_str(), choice["dsocr_finish_reason"].as_str()),
        (Some("stop"), Some("stop"))
    );
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], OCR_SCRIPT.len());
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 273, "image tokens are counted: {usage}");
    assert_eq!(usage["total_tokens"], usage["prompt_tokens"].as_u64().unwrap() + OCR_SCRIPT.len() as u64);

    // The cleaned markdown instead of the raw output.
    let mut req = chat("", false);
    req["dsocr"]["output"] = json!("markdown");
    let (_, body) = json_of(&s.app, post_json("/v1/chat/completions", &req)).await;
    assert_eq!(body["choices"][0]["message"]["content"], "\nHello world", "the tags removed, as in the .mmd");

    // Random weights never say EOS: the token limit is `length`, with dsocr's reason beside it.
    let r = random_server();
    let mut req = chat("Free OCR.", false);
    req["max_tokens"] = json!(5);
    let (status, body) = json_of(&r.app, post_json("/v1/chat/completions", &req)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert!(["length", "repetition"].contains(&body["choices"][0]["dsocr_finish_reason"].as_str().unwrap()));
    assert_eq!(body["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn chat_completion_streams_chunks_then_usage_then_done() {
    let s = scripted_server();
    let (status, headers, body) = send(&s.app, post_json("/v1/chat/completions", &chat("", true))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    let events = sse(&body);
    assert_eq!(events.last().map(|(_, d)| d.as_str()), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|(_, d)| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert_eq!(text, OCR_SCRIPT_TEXT);
    let last_choice = &chunks[chunks.len() - 2]["choices"][0];
    assert_eq!(
        (last_choice["finish_reason"].as_str(), last_choice["dsocr_finish_reason"].as_str()),
        (Some("stop"), Some("stop"))
    );
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], OCR_SCRIPT.len());
}

#[tokio::test]
async fn ocr_upload_answers_the_cli_json_markdown_or_a_stream_of_pages() {
    let s = scripted_server();
    let page = std::fs::read(fixture_image("page.png")).unwrap();
    let [g1, g2] = guard_fields();
    let fields = [(g1.0, g1.1.as_str()), (g2.0, g2.1.as_str())];
    let (status, doc) = json_of(&s.app, multipart(Some(("page.png", &page)), &fields)).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    assert_eq!(
        (doc["name"].as_str(), doc["kind"].as_str(), doc["source"].as_str()),
        (Some("page"), Some("image"), Some("page.png"))
    );
    let p = &doc["pages"][0];
    assert_eq!((p["finish_reason"].as_str(), p["complete"].as_bool()), (Some("stop"), Some(true)));
    assert_eq!(p["markdown"], "\nHello world");
    assert_eq!(p["blocks"][0]["label"], "text");
    assert_eq!(p["blocks"][0]["boxes"], json!([[125, 346, 789, 905]]));
    let (w, h) = (p["width"].as_u64().unwrap(), p["height"].as_u64().unwrap());
    assert_eq!(p["blocks"][0]["pixel_boxes"][0][2], (789.0 / 999.0 * w as f64) as u64);
    assert!(h > 0);

    let md_fields = [fields[0], fields[1], ("format", "md")];
    let (status, headers, body) = send(&s.app, multipart(Some(("page.png", &page)), &md_fields)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/markdown"));
    assert_eq!(body, b"\nHello world");

    // A PDF, pages 2 and 3 of 3, streamed with page images.
    let pdf = make_pdf(&["One", "Two", "Three"], 300, 200);
    let stream_fields =
        [fields[0], fields[1], ("stream", "true"), ("page_images", "true"), ("pages", "2-3"), ("mode", "tiny")];
    let (status, _, body) = send(&s.app, multipart(Some(("doc.pdf", &pdf)), &stream_fields)).await;
    assert_eq!(status, StatusCode::OK);
    let events = sse(&body);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).filter(|e| *e != "text").collect();
    assert_eq!(names, ["document", "page_started", "page", "page_started", "page", "done"]);
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "text")
        .map(|(_, d)| serde_json::from_str::<Value>(d).unwrap()["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, format!("{OCR_SCRIPT_TEXT}{OCR_SCRIPT_TEXT}"));
    let first: Value = serde_json::from_str(&events[0].1).unwrap();
    assert_eq!((first["kind"].as_str(), first["pages"].as_u64()), (Some("pdf"), Some(2)));
    let page_event: Value = serde_json::from_str(&events.iter().find(|(e, _)| e == "page").unwrap().1).unwrap();
    assert_eq!(page_event["page"], 2);
    assert!(page_event["image"].as_str().unwrap().starts_with("data:image/jpeg;base64,"));
    let done: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    let numbers: Vec<u64> =
        done["document"]["pages"].as_array().unwrap().iter().map(|p| p["page"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [2, 3]);
    let split = dsocr::render::PAGE_SPLIT;
    assert_eq!(done["markdown"], format!("\nHello world{split}\nHello world{split}"));
}

/// A PNG header declaring `width × height` (valid signature and IHDR CRC, no pixels).
fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    // The decoder reads up to the first image data chunk before it reports the size.
    let idat = b"IDAT\x78\x9c\x03\x00\x00\x00\x00\x01";
    png.extend(((idat.len() - 4) as u32).to_be_bytes());
    png.extend(idat);
    png.extend(crc32(idat).to_be_bytes());
    png
}

fn expect_error(status: StatusCode, body: &Value, want: StatusCode, code: &str, says: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "`{message}` should mention `{says}`");
    assert!(body["error"]["type"].is_string());
}

#[tokio::test]
async fn malformed_requests_get_a_status_and_a_clear_error() {
    let s =
        server_with(reference_tiny(), ServerOptions { max_body_bytes: 200_000, max_pages: 2, ..Default::default() }, 8);
    let with_url = |url: &str| json!({ "messages": [{ "role": "user", "content": [{ "type": "image_url", "image_url": { "url": url } }] }] });
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let cases: Vec<(Value, StatusCode, &str, &str)> = vec![
        (with_url("data:image/png;base64,@@not base64@@"), StatusCode::BAD_REQUEST, "invalid_request", "base64"),
        (
            with_url(&format!("data:image/png;base64,{}", b64(b"hello, not an image"))),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
            "not a recognised image",
        ),
        (
            with_url(&format!("data:image/png;base64,{}", b64(&png_header(100_000, 100_000)))),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "pixels",
        ),
        (with_url("https://example.com/scan.png"), StatusCode::BAD_REQUEST, "invalid_request", "fetches nothing"),
        (
            with_url("data:application/pdf;base64,AAAA"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media",
            "/v1/ocr",
        ),
        (json!({ "messages": "hello" }), StatusCode::BAD_REQUEST, "invalid_request", "invalid type"),
        (
            json!({ "messages": [{ "role": "user", "content": "no image" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no image",
        ),
        (
            json!({ "messages": [{ "role": "assistant", "content": "hi" }] }),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no `user` message",
        ),
        (json!({ "messages": [], "max_tokens": "many" }), StatusCode::BAD_REQUEST, "invalid_request", "invalid type"),
        (json!({ "messages": [], "dsocr": { "bogus": 1 } }), StatusCode::BAD_REQUEST, "invalid_request", "bogus"),
    ];
    for (body, status, code, says) in cases {
        let (got, answer) = json_of(&s.app, post_json("/v1/chat/completions", &body)).await;
        expect_error(got, &answer, status, code, says);
    }
    // Not JSON at all, and a body over the limit.
    let (got, answer) = json_of(&s.app, Request::post("/v1/chat/completions").body(Body::from("{nope")).unwrap()).await;
    expect_error(got, &answer, StatusCode::BAD_REQUEST, "invalid_request", "not a valid chat completion request");
    let big = json!({ "messages": [], "pad": "x".repeat(300_000) });
    let (got, answer) = json_of(&s.app, post_json("/v1/chat/completions", &big)).await;
    expect_error(got, &answer, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "limit");

    // Uploads.
    let page = std::fs::read(fixture_image("small.png")).unwrap();
    let pdf3 = make_pdf(&["a", "b", "c"], 200, 200);
    let uploads: Vec<(Request<Body>, StatusCode, &str, &str)> = vec![
        (multipart(None, &[("task", "ocr")]), StatusCode::BAD_REQUEST, "invalid_request", "`file` field is missing"),
        (
            multipart(Some(("x.png", &page)), &[("bogus", "1")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown field `bogus`",
        ),
        (multipart(Some(("x.png", &page)), &[("mode", "huge")]), StatusCode::BAD_REQUEST, "invalid_request", "huge"),
        (
            multipart(Some(("x.png", &page)), &[("max_crops", "1")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "max_crops",
        ),
        (
            multipart(Some(("x.png", &page)), &[("stream", "maybe")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "true or false",
        ),
        (
            multipart(Some(("x.png", &page)), &[("pages", "0")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "numbered from 1",
        ),
        (
            multipart(Some(("x.png", &page)), &[("task", "ocr"), ("prompt", "<image>x")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "not both",
        ),
        (multipart(Some(("empty.png", b"")), &[]), StatusCode::BAD_REQUEST, "invalid_request", "empty"),
        (
            multipart(Some(("big.png", &png_header(100_000, 100_000))), &[]),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "big.png",
        ),
        (multipart(Some(("doc.pdf", &pdf3)), &[]), StatusCode::PAYLOAD_TOO_LARGE, "too_large", "limit of 2"),
        (
            multipart(Some(("doc.pdf", &pdf3)), &[("pages", "5")]),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "page 5 does not exist",
        ),
        (multipart(Some(("doc.pdf", b"%PDF-1.4 junk")), &[]), StatusCode::BAD_REQUEST, "bad_pdf", "doc.pdf"),
        (multipart(Some(("big.bin", &vec![7u8; 300_000])), &[]), StatusCode::PAYLOAD_TOO_LARGE, "too_large", "limit"),
        (
            Request::post("/v1/ocr").header(header::CONTENT_TYPE, "text/plain").body(Body::from("x")).unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "multipart",
        ),
    ];
    for (request, status, code, says) in uploads {
        let (got, answer) = json_of(&s.app, request).await;
        expect_error(got, &answer, status, code, says);
    }
    let (got, answer) = json_of(&s.app, Request::get("/v1/nothing").body(Body::empty()).unwrap()).await;
    expect_error(got, &answer, StatusCode::NOT_FOUND, "not_found", "/v1/nothing");
    // The server is still there and counted every answer.
    let (status, body) = json_of(&s.app, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    let (_, _, metrics) = send(&s.app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("dsocr_http_requests_total{route=\"/v1/ocr\",status=\"413\"} 3"), "{metrics}");
    assert!(
        metrics.contains("dsocr_http_requests_total{route=\"/v1/chat/completions\",status=\"400\"} 8"),
        "{metrics}"
    );
}

#[tokio::test]
async fn api_key_cors_models_health_and_the_page() {
    let options = ServerOptions {
        api_key: Some("s3cret".into()),
        cors_origin: Some("http://app.example".into()),
        ..Default::default()
    };
    let s = server_with(reference_tiny(), options, 8);
    let get = |path: &str, key: Option<&str>| {
        let mut r = Request::get(path);
        if let Some(key) = key {
            r = r.header(header::AUTHORIZATION, format!("Bearer {key}"));
        }
        r.body(Body::empty()).unwrap()
    };
    for path in ["/v1/models", "/metrics"] {
        let (status, body) = json_of(&s.app, get(path, None)).await;
        expect_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
        let (status, _) = json_of(&s.app, get(path, Some("wrong"))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = json_of(&s.app, post_json("/v1/chat/completions", &chat("", false))).await;
    expect_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized", "API key");
    let (status, body) = json_of(&s.app, get("/v1/models", Some("s3cret"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"][0]["id"], "deepseek-ai/DeepSeek-OCR");
    assert_eq!(body["object"], "list");
    let (status, _) = json_of(&s.app, get("/health", None)).await;
    assert_eq!(status, StatusCode::OK, "health needs no key");
    // The page and its assets: embedded, no key, a strict content security policy.
    for (path, ct, says) in [
        ("/", "text/html", "<title>dsocr</title>"),
        ("/app.js", "text/javascript", "DOMPurify.sanitize"),
        ("/vendor/marked.umd.js", "text/javascript", "marked"),
        ("/vendor/purify.min.js", "text/javascript", "DOMPurify"),
        ("/vendor/LICENSE-dompurify.txt", "text/plain", "Apache License"),
    ] {
        let (status, headers, body) = send(&s.app, get(path, None)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with(ct), "{path}");
        assert!(headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap().contains("script-src 'self'"));
        assert!(String::from_utf8_lossy(&body).contains(says), "{path}");
    }
    // CORS for the one origin allowed.
    let preflight = Request::options("/v1/chat/completions")
        .header(header::ORIGIN, "http://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "authorization,content-type")
        .body(Body::empty())
        .unwrap();
    let (_, headers, _) = send(&s.app, preflight).await;
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "http://app.example");
    let other = Request::get("/health").header(header::ORIGIN, "http://evil.example").body(Body::empty()).unwrap();
    let (_, headers, _) = send(&s.app, other).await;
    // The allowed origin is named whatever the request says: a browser on another origin is refused.
    assert_ne!(
        headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).map(|v| v.to_str().unwrap()),
        Some("http://evil.example")
    );
    // Without --cors no CORS headers at all.
    let plain = random_server();
    let request = Request::get("/health").header(header::ORIGIN, "http://app.example").body(Body::empty()).unwrap();
    let (_, headers, _) = send(&plain.app, request).await;
    assert!(!headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
}

#[tokio::test]
async fn full_queue_deadline_and_a_client_that_goes_away() {
    // No room in the queue: 429 with Retry-After.
    let s = server_with(reference_tiny(), ServerOptions::default(), 0);
    let (status, headers, body) = send(&s.app, post_json("/v1/chat/completions", &chat("", false))).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    expect_error(status, &body, StatusCode::TOO_MANY_REQUESTS, "queue_full", "busy");
    assert!(headers[header::RETRY_AFTER].to_str().unwrap().parse::<u64>().unwrap() >= 1);

    // A deadline shorter than the work: 504.
    let s =
        server_with(reference_tiny(), ServerOptions { timeout: Duration::from_millis(300), ..Default::default() }, 8);
    let mut req = chat("Free OCR.", false);
    req["max_tokens"] = json!(8000);
    req["dsocr"] = json!({ "repeat_guard": false });
    let (status, body) = json_of(&s.app, post_json("/v1/chat/completions", &req)).await;
    expect_error(status, &body, StatusCode::GATEWAY_TIMEOUT, "timeout", "deadline");
    assert_eq!(s.state.engine.stats().timed_out, 1);

    // A streaming client that reads one chunk and goes away: generation stops, the slot is free.
    let s = random_server();
    let mut req = chat("Free OCR.", true);
    req["max_tokens"] = json!(8000);
    req["dsocr"] = json!({ "repeat_guard": false });
    let response = s.app.clone().oneshot(post_json("/v1/chat/completions", &req)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first chunk").expect("no error");
    assert!(first.is_data());
    assert_eq!(s.state.engine.stats().running, 1);
    drop(body);
    let mut waited = 0;
    while s.state.engine.stats().running > 0 || s.state.engine.stats().cancelled == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += 1;
        assert!(waited < 500, "the request was not cancelled: {:?}", s.state.engine.stats());
    }
    let stats = s.state.engine.stats();
    assert!(stats.tokens < 8000 && stats.cancelled == 1, "{stats:?}");
    let (_, _, metrics) = send(&s.app, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("dsocr_client_disconnects_total 1"), "{metrics}");
    assert!(metrics.contains("dsocr_engine_requests_total{outcome=\"cancelled\"} 1"), "{metrics}");
    assert!(metrics.contains("dsocr_live_sequences 0"), "{metrics}");
}

#[tokio::test]
async fn concurrent_requests_decode_together_with_batching() {
    let s = batched_server(scripted_dir(), ServerOptions::default(), 8, 4);
    let requests = (0..4).map(|k| {
        let app = s.app.clone();
        let body = chat("", k % 2 == 1);
        tokio::spawn(async move { send(&app, post_json("/v1/chat/completions", &body)).await })
    });
    for (k, handle) in requests.enumerate() {
        let (status, _, body) = handle.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let text = if k % 2 == 1 {
            sse(&body)
                .iter()
                .filter_map(|(_, d)| serde_json::from_str::<Value>(d).ok())
                .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                .collect::<String>()
        } else {
            serde_json::from_slice::<Value>(&body).unwrap()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(text, OCR_SCRIPT_TEXT, "request {k}");
    }
    let stats = s.state.engine.stats();
    assert_eq!((stats.completed, stats.pages, stats.running), (4, 4, 0));
}
