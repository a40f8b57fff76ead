//! Logging: the tracing subscriber, writing text or JSON lines to stderr, filtered by the
//! `PGMERIDIAN_LOG` environment variable (a tracing filter; default `info`). Span field names
//! used across the crate: the `session` span carries `id`, `client`, `via`, `cluster`, `geo`.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; call once, before anything logs.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("PGMERIDIAN_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        // Each line: timestamp, level, fields, target, the innermost span and the span list.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}
