//! Trace context for the components' spans: the trace id shown in log lines, and W3C
//! `traceparent` continued from incoming requests.
//!
//! Spans come from `tracing`; when the process exports traces (`kelson --otlp-endpoint`), an
//! OpenTelemetry layer turns them into OTLP spans. Root spans declare a `trace_id` field that
//! [`record_trace_id`] fills, so every log line written inside them names its trace. With no
//! exporter both functions do nothing.

use opentelemetry::trace::TraceContextExt as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Fills `span`'s `trace_id` field (declared `tracing::field::Empty`) with its trace id.
pub fn record_trace_id(span: &tracing::Span) {
    let context = span.context();
    let trace = context.span().span_context().clone();
    if trace.is_valid() {
        span.record("trace_id", tracing::field::display(trace.trace_id()));
    }
}

/// Names `span` for what it turned out to be (a request span once it is routed).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// Makes `span` a child of the trace an incoming request names in its `traceparent` header
/// (call before [`record_trace_id`]).
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Headers(headers))
    });
    let _ = span.set_parent(parent);
}

struct Headers<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)?.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Adds the current span's trace to an outgoing request as a `traceparent` header, so the
/// server's span joins the caller's trace.
pub fn inject(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeadersMut(headers));
    });
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl opentelemetry::propagation::Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_request_continues_the_callers_trace_and_its_log_lines_name_it() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || writer.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
        let mut incoming = http::HeaderMap::new();
        incoming.insert(
            "traceparent",
            format!("00-{caller}-00f067aa0ba902b7-01").parse().unwrap(),
        );
        let mut outgoing = http::HeaderMap::new();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
            continue_from(&span, &incoming);
            record_trace_id(&span);
            span.in_scope(|| {
                tracing::info!("handled");
                inject(&mut outgoing);
            });
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(text.contains(&format!("trace_id={caller}")), "{text}");
        let sent = outgoing["traceparent"].to_str().unwrap();
        assert!(sent.starts_with(&format!("00-{caller}-")), "{sent}");
        assert!(
            !sent.contains("00f067aa0ba902b7"),
            "a new span of the same trace"
        );
    }

    #[test]
    fn without_an_exporter_nothing_is_recorded_or_sent() {
        let mut outgoing = http::HeaderMap::new();
        let span = tracing::info_span!("request", trace_id = tracing::field::Empty);
        record_trace_id(&span);
        span.in_scope(|| inject(&mut outgoing));
        assert!(outgoing.is_empty());
    }
}
