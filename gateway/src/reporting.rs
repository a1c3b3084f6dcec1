//! Error reporting through Sentry when `sentry_dsn` is configured: every error the process logs
//! becomes a Sentry event, tagged with the id of the request or job it served (`request_id`: the
//! `X-Request-Id`, which is also the correlation id of that request's events), and so does every
//! panic and a command that fails. Nothing personal is meant to leave: no IP addresses, request
//! bodies, headers or users (`send_default_pii` stays off), and of the log line's fields those that
//! may name a file or a person ([`PERSONAL_FIELDS`]) are left out; the message, where it was logged
//! and the error with its causes are sent.

use std::sync::Arc;

use secrecy::ExposeSecret as _;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

/// The context in which Sentry's tracing integration puts a log line's fields.
const FIELDS: &str = "Rust Tracing Fields";

/// Fields of log lines that may name a file or a person (a job's reason for failing names the file
/// it failed on; the log itself seals it in events): never sent.
pub const PERSONAL_FIELDS: [&str; 7] = ["reason", "path", "file", "from", "to", "email", "name"];

/// Starts the Sentry client when a DSN is configured; reports are sent until the returned guard
/// is dropped, which waits (two seconds at most) for those still on their way.
#[must_use]
pub fn start(config: &Config) -> Option<sentry::ClientInitGuard> {
    // `Config::validate` refused a DSN that does not parse.
    let dsn = config.sentry_dsn.as_ref()?.expose_secret().parse::<sentry::types::Dsn>().ok()?;
    let mut options = sentry::ClientOptions::new();
    options.dsn = Some(dsn);
    options.release = Some(concat!("cloudsync@", env!("CARGO_PKG_VERSION")).into());
    options.environment = config.sentry_environment.clone().map(Into::into);
    options.send_default_pii = false;
    options.before_send = Some(Arc::new(|event| Some(scrubbed(event, cloudsync_commands::current_correlation()))));
    Some(sentry::init(options))
}

/// `event` as it is sent: tagged with the request or job it served (`correlation`), and without
/// the fields that may name a file or a person.
fn scrubbed(mut event: sentry::protocol::Event<'static>, correlation: Option<uuid::Uuid>) -> sentry::protocol::Event<'static> {
    if let Some(id) = correlation {
        event.tags.insert("request_id".to_owned(), id.to_string());
    }
    if let Some(sentry::protocol::Context::Other(fields)) = event.contexts.get_mut(FIELDS) {
        fields.retain(|name, _| !PERSONAL_FIELDS.contains(&name.as_str()));
    }
    event
}

/// The tracing layer that turns logged errors into Sentry events (only errors, whatever
/// `CLOUDSYNC_LOG` says: warnings and lines below are not sent).
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    sentry::integrations::tracing::ErrorLayer::new().with_filter(tracing_subscriber::filter::LevelFilter::ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_keep_the_error_and_the_request_but_no_field_that_names_a_file() {
        let mut event = sentry::protocol::Event::default();
        let fields: sentry::protocol::Map<String, serde_json::Value> = [
            ("error", "the session store is unavailable"),
            ("job", "0190c6f4-0000-7000-8000-000000000001"),
            ("reason", "not found: docs/diary.txt"),
            ("path", "docs/diary.txt"),
            ("email", "ada@example.org"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
        .collect();
        event.contexts.insert(FIELDS.to_owned(), sentry::protocol::Context::Other(fields));
        let id = uuid::Uuid::new_v4();
        let sent = scrubbed(event, Some(id));
        assert_eq!(sent.tags.get("request_id"), Some(&id.to_string()));
        let Some(sentry::protocol::Context::Other(fields)) = sent.contexts.get(FIELDS) else {
            panic!("the fields stay a context");
        };
        let kept: Vec<&str> = fields.keys().map(String::as_str).collect();
        assert_eq!(kept, ["error", "job"]);
        let text = serde_json::to_string(&sent).expect("json");
        assert!(!text.contains("diary") && !text.contains("ada@"), "{text}");
    }
}
