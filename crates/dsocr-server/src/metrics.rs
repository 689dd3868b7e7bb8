//! `GET /metrics` in the Prometheus text format: requests by route and status, latency
//! histograms by route, and the engine's queue depth, live sequences, pages and tokens.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use dsocr::engine::EngineStats;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    disconnects: u64,
}

/// The server's own counters (the engine keeps the rest).
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Counts a request to `route` answered with `status` after `elapsed` (for a stream: until
    /// the response head was sent).
    pub fn record(&self, route: &str, status: u16, elapsed: Duration) {
        let Ok(mut inner) = self.inner.lock() else { return };
        *inner.requests.entry((route.to_string(), status)).or_default() += 1;
        let h = inner.latency.entry(route.to_string()).or_default();
        let secs = elapsed.as_secs_f64();
        for (count, bound) in h.counts.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *count += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// Counts a client that went away before its answer was complete.
    pub fn record_disconnect(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.disconnects += 1;
        }
    }

    /// The text exposition, with the engine's counters.
    pub fn render(&self, engine: &EngineStats) -> String {
        let mut out = String::new();
        let inner = match self.inner.lock() {
            Ok(inner) => inner,
            Err(poisoned) => poisoned.into_inner(),
        };
        let _ = writeln!(out, "# HELP dsocr_http_requests_total HTTP requests answered, by route and status.");
        let _ = writeln!(out, "# TYPE dsocr_http_requests_total counter");
        for ((route, status), n) in &inner.requests {
            let _ = writeln!(out, "dsocr_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP dsocr_http_request_duration_seconds Time to the response head, by route.");
        let _ = writeln!(out, "# TYPE dsocr_http_request_duration_seconds histogram");
        for (route, h) in &inner.latency {
            for (count, bound) in h.counts.iter().zip(BUCKETS) {
                let _ = writeln!(
                    out,
                    "dsocr_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "dsocr_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "dsocr_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "dsocr_http_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        let _ = writeln!(out, "# HELP dsocr_client_disconnects_total Clients gone before their answer was complete.");
        let _ = writeln!(out, "# TYPE dsocr_client_disconnects_total counter");
        let _ = writeln!(out, "dsocr_client_disconnects_total {}", inner.disconnects);
        let gauges = [
            ("dsocr_queue_depth", "Requests waiting for the engine.", engine.queued as u64),
            ("dsocr_running_requests", "Requests started and not finished.", engine.running as u64),
            ("dsocr_live_sequences", "Pages being generated now.", engine.live_pages as u64),
            (
                "dsocr_peak_live_sequences",
                "The most pages generated at once since the start.",
                engine.peak_live_pages as u64,
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let _ = writeln!(out, "# HELP dsocr_engine_requests_total Engine requests finished, by outcome.");
        let _ = writeln!(out, "# TYPE dsocr_engine_requests_total counter");
        for (outcome, n) in [
            ("completed", engine.completed),
            ("failed", engine.failed),
            ("cancelled", engine.cancelled),
            ("timed_out", engine.timed_out),
        ] {
            let _ = writeln!(out, "dsocr_engine_requests_total{{outcome=\"{outcome}\"}} {n}");
        }
        let counters = [
            ("dsocr_pages_total", "Pages generated.", engine.pages),
            ("dsocr_generated_tokens_total", "Tokens generated (retries included).", engine.tokens),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_per_route_and_status() {
        let m = Metrics::default();
        m.record("/v1/ocr", 200, Duration::from_millis(30));
        m.record("/v1/ocr", 200, Duration::from_secs(3));
        m.record("/v1/ocr", 429, Duration::from_millis(1));
        m.record_disconnect();
        let text = m.render(&EngineStats {
            queued: 2,
            running: 1,
            live_pages: 3,
            peak_live_pages: 5,
            pages: 7,
            ..EngineStats::default()
        });
        for line in [
            "dsocr_http_requests_total{route=\"/v1/ocr\",status=\"200\"} 2",
            "dsocr_http_requests_total{route=\"/v1/ocr\",status=\"429\"} 1",
            "dsocr_http_request_duration_seconds_bucket{route=\"/v1/ocr\",le=\"0.005\"} 1",
            "dsocr_http_request_duration_seconds_bucket{route=\"/v1/ocr\",le=\"0.05\"} 2",
            "dsocr_http_request_duration_seconds_bucket{route=\"/v1/ocr\",le=\"5\"} 3",
            "dsocr_http_request_duration_seconds_bucket{route=\"/v1/ocr\",le=\"+Inf\"} 3",
            "dsocr_http_request_duration_seconds_count{route=\"/v1/ocr\"} 3",
            "dsocr_client_disconnects_total 1",
            "dsocr_queue_depth 2",
            "dsocr_running_requests 1",
            "dsocr_live_sequences 3",
            "dsocr_peak_live_sequences 5",
            "dsocr_pages_total 7",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in\n{text}");
        }
    }
}
