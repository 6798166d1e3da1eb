//! JSON logs in Cloud Logging's structured format: one line per event with `severity`, `message`, `time`,
//! the fields of every enclosing span (tenant_id, call_id, ...), and `logging.googleapis.com/trace` /
//! `spanId` when the request carried a trace context, so Cloud Logging groups a request's lines and links them
//! to Cloud Trace. Every string value is scrubbed of phone numbers and email addresses before it is written.

use std::io::Write;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

use crate::domain::pii::scrub;

/// Span field names the layer turns into Cloud Logging's trace fields.
pub const TRACE_FIELD: &str = "trace_id";
pub const SPAN_FIELD: &str = "span_id";

struct SpanFields(Map<String, Value>);

#[derive(Default)]
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), Value::String(scrub(value).into_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        self.0.insert(field.name().to_owned(), Value::String(scrub(&text).into_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
}

/// The layer. `W` is where lines go (stdout in production; a buffer in tests).
pub struct CloudLogging<W> {
    service: String,
    project: Option<String>,
    make_writer: W,
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        _ => "DEBUG",
    }
}

impl<W> CloudLogging<W> {
    pub fn new(service: &str, project: Option<String>, make_writer: W) -> Self {
        Self { service: service.to_owned(), project, make_writer }
    }
}

impl<S, W> Layer<S> for CloudLogging<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: Fn() -> Box<dyn Write> + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut v = JsonVisitor::default();
        attrs.record(&mut v);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(v.0));
        }
    }

    fn on_record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut ext = span.extensions_mut();
            if let Some(fields) = ext.get_mut::<SpanFields>() {
                let mut v = JsonVisitor(std::mem::take(&mut fields.0));
                values.record(&mut v);
                fields.0 = v.0;
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = Map::new();
        line.insert("severity".into(), severity(event.metadata().level()).into());
        line.insert("time".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    line.extend(fields.0.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
        }
        let mut v = JsonVisitor::default();
        event.record(&mut v);
        line.extend(v.0);
        if let Some(Value::String(trace)) = line.remove(TRACE_FIELD) {
            let value = match &self.project {
                Some(p) => format!("projects/{p}/traces/{trace}"),
                None => trace,
            };
            line.insert("logging.googleapis.com/trace".into(), value.into());
        }
        if let Some(span) = line.remove(SPAN_FIELD) {
            line.insert("logging.googleapis.com/spanId".into(), span);
        }
        line.insert("target".into(), event.metadata().target().into());
        line.insert("serviceContext".into(), serde_json::json!({ "service": self.service }));
        let mut out = serde_json::to_vec(&Value::Object(line)).unwrap_or_default();
        out.push(b'\n');
        let _ = (self.make_writer)().write_all(&out);
    }
}

/// Install the JSON logger for a function. Level from `RUST_LOG` (default `info`); project from
/// `GOOGLE_CLOUD_PROJECT` (for the trace field's full name).
pub fn init(service: &str) {
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.is_empty());
    let layer = CloudLogging::new(service, project, || Box::new(std::io::stdout().lock()) as Box<dyn Write>);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
}

/// The same lines on stderr, for operator commands whose stdout is their answer (`--json` output for scripts).
pub fn init_stderr(service: &str) {
    let project = std::env::var("GOOGLE_CLOUD_PROJECT").ok().filter(|p| !p.is_empty());
    let layer = CloudLogging::new(service, project, || Box::new(std::io::stderr().lock()) as Box<dyn Write>);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::registry().with(filter).with(layer).try_init();
}

/// The trace and span ids of a request, from W3C `traceparent` or Google's `X-Cloud-Trace-Context`.
pub fn trace_context(headers: &http::HeaderMap) -> Option<(String, Option<String>)> {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let parts: Vec<&str> = tp.trim().split('-').collect();
        if parts.len() == 4 && parts[1].len() == 32 && parts[1].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Some((parts[1].to_owned(), Some(parts[2].to_owned())));
        }
    }
    let xc = headers.get("x-cloud-trace-context").and_then(|v| v.to_str().ok())?;
    let (trace, rest) = xc.split_once('/').unwrap_or((xc, ""));
    let span = rest.split(';').next().filter(|s| !s.is_empty()).map(str::to_owned);
    (!trace.is_empty() && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (trace.to_owned(), span))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn lines_are_cloud_logging_json_with_trace_and_masked_pii() {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let sink = buf.clone();
        struct W(Arc<Mutex<Vec<u8>>>);
        impl Write for W {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let layer =
            CloudLogging::new("on-webhook", Some("proj".into()), move || Box::new(W(sink.clone())) as Box<dyn Write>);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                trace_id = "4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = "00f067aa0ba902b7",
                tenant_id = "acme"
            );
            let _g = span.enter();
            tracing::warn!(caller = "+12148654559", "rejected webhook from kay@example.com");
        });
        let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["logging.googleapis.com/trace"], "projects/proj/traces/4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(line["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        assert_eq!(line["tenant_id"], "acme");
        assert_eq!(line["caller"], "+1*******559");
        assert!(!text.contains("kay@example.com") && !text.contains("8654559"), "{text}");
    }

    #[test]
    fn trace_context_from_either_header() {
        let mut h = http::HeaderMap::new();
        h.insert("x-cloud-trace-context", "105445aa7843bc8bf206b12000100000/1;o=1".parse().unwrap());
        assert_eq!(trace_context(&h), Some(("105445aa7843bc8bf206b12000100000".into(), Some("1".into()))));
        h.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap());
        assert_eq!(trace_context(&h).unwrap().0, "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
