//! Logging and tracing set-up for every `kelson` command: log lines on stderr, and, when an
//! OTLP endpoint is given, the components' spans (API requests, controller reconciles, GitOps
//! syncs, pod starts) exported to it over OTLP/gRPC.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The installed exporter; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the global subscriber: `log` filters log lines; spans of Kelson's components
    /// at `info` and above go to `endpoint` (e.g. `http://127.0.0.1:4317`) as service
    /// `service` (unless `OTEL_SERVICE_NAME` names another).
    ///
    /// # Errors
    /// An invalid filter or endpoint.
    pub fn init(log: &str, endpoint: Option<&str>, service: &str) -> anyhow::Result<Self> {
        let filter = tracing_subscriber::EnvFilter::try_new(log).context("invalid --log filter")?;
        // colours only for a terminal: log files stay greppable
        let lines = tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(filter);
        let Some(endpoint) = endpoint else {
            tracing_subscriber::registry().with(lines).init();
            return Ok(Self { provider: None });
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .with_context(|| format!("invalid --otlp-endpoint {endpoint}"))?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service.to_owned());
        }
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let spans = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("kelson"))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("kelson", tracing::Level::INFO),
            );
        tracing_subscriber::registry()
            .with(lines)
            .with(spans)
            .init();
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// Exports the spans still buffered.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}
