//! Logging: JSON lines on stdout (what the Functions host forwards to App Insights), or a
//! human format for local development.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, Settings};

/// Installs the global subscriber. Call once, at start-up.
pub fn init(settings: &Settings) {
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout);
    let result = match settings.log_format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    if result.is_err() {
        // Already installed (tests); nothing to do.
    }
    if settings.appinsights_connection_string.is_some() {
        tracing::warn!(
            "APPLICATIONINSIGHTS_CONNECTION_STRING is set: logs go to stdout, which the Functions host forwards; \
             the direct OpenTelemetry exporter is not built in yet"
        );
    }
}
