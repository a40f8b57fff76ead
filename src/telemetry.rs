//! Logging: the tracing subscriber, writing text or JSON lines to stderr, filtered by the
//! `PGMERIDIAN_LOG` environment variable (a tracing filter; default `info`). Span field names
//! used across the crate: the `session` span carries `id`, `client`, `via`, `cluster`, `geo`.

use std::borrow::Cow;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// Installs the global subscriber; call once, before anything logs.
///
/// A filter made of `target=level` directives (the usual case) is applied per layer with
/// `Targets`, which costs nothing when a span is entered; filters that select spans or fields
/// (`[span{field=…}]`) need `EnvFilter`, which takes a lock at every span entry (every poll of a
/// session's task).
pub fn init(format: LogFormat) {
    let spec = std::env::var("PGMERIDIAN_LOG").unwrap_or_else(|_| "info".into());
    let targets = (!spec.contains(['[', '{']))
        .then(|| spec.parse::<Targets>().ok())
        .flatten();
    let json = format == LogFormat::Json;
    // One output, so the filter is global (a per-layer filter would be consulted again at
    // every span entry and exit, on the session's hot path).
    match targets {
        Some(t) => tracing_subscriber::registry()
            .with(t)
            .with(layer(json))
            .init(),
        None => {
            let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
            tracing_subscriber::registry()
                .with(filter)
                .with(layer(json))
                .init()
        }
    }
}

/// The output: text or JSON lines on stderr.
fn layer<S>(json: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use std::io::IsTerminal;
    // Colours only for a person at a terminal: files, journald and `docker logs` get plain text
    // (and a session's span fields are formatted once per session, without escape codes).
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        // Each line: timestamp, level, fields, target, the innermost span and the span list.
        fmt.json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed()
    } else {
        fmt.boxed()
    }
}

/// `text` with control characters (newlines, carriage returns, escape sequences) written as
/// escapes, for log lines that carry a string a client or a server chose: a user name with a
/// newline in it must not start a forged line in a text log. Borrowed when nothing needs it.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_escaped() {
        for (input, want) in [
            ("app", "app"),
            ("", ""),
            ("évêque \"q\"", "évêque \"q\""),
            (
                "x\n2024-01-01T00:00:00Z  INFO forged",
                "x\\n2024-01-01T00:00:00Z  INFO forged",
            ),
            ("a\r\tb", "a\\r\\tb"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
        ] {
            assert_eq!(super::escape(input), want, "{input:?}");
        }
    }
}
