//! The web page at `/`: its HTML, script, style and the vendored markdown renderer and
//! sanitiser, embedded in the binary (no CDN: the page works offline). The files hold no data
//! and are the same for everyone, so they are served without the API key; the page asks for
//! the key when the API answers 401.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: [Asset; 7] = [
    Asset { path: "/", content_type: "text/html; charset=utf-8", body: include_str!("../assets/index.html") },
    Asset { path: "/app.js", content_type: "text/javascript; charset=utf-8", body: include_str!("../assets/app.js") },
    Asset { path: "/app.css", content_type: "text/css; charset=utf-8", body: include_str!("../assets/app.css") },
    Asset {
        path: "/vendor/marked.umd.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/vendor/marked.umd.js"),
    },
    Asset {
        path: "/vendor/purify.min.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../assets/vendor/purify.min.js"),
    },
    Asset {
        path: "/vendor/LICENSE-marked.md",
        content_type: "text/plain; charset=utf-8",
        body: include_str!("../assets/vendor/LICENSE-marked.md"),
    },
    Asset {
        path: "/vendor/LICENSE-dompurify.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_str!("../assets/vendor/LICENSE-dompurify.txt"),
    },
];

/// Scripts only from the server itself, images also from data:/blob: URLs (page images and the
/// user's own file): model output that slipped past the sanitiser still cannot run code.
const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new();
    for asset in &ASSETS {
        let (content_type, body) = (asset.content_type, asset.body);
        router = router.route(asset.path, get(move || async move { serve(content_type, body) }));
    }
    router
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
