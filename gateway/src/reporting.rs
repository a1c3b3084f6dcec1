//! Error reporting through Sentry when `sentry_dsn` is configured: every error the process logs
//! becomes a Sentry event, tagged with the id of the request or job it served (`request_id`: the
//! `X-Request-Id`, which is also the correlation id of that request's events), and so does every
//! panic. Nothing personal is sent: no IP addresses, request bodies, headers or users
//! (`send_default_pii` stays off), only what the log line itself says.

use std::sync::Arc;

use secrecy::ExposeSecret as _;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::Config;

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
    options.before_send = Some(Arc::new(|mut event| {
        if let Some(id) = cloudsync_commands::current_correlation() {
            event.tags.insert("request_id".to_owned(), id.to_string());
        }
        Some(event)
    }));
    Some(sentry::init(options))
}

/// The tracing layer that turns logged errors into Sentry events (only errors: warnings and
/// lines below are not sent).
pub fn layer<S>() -> impl Layer<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    sentry::integrations::tracing::ErrorLayer::new().with_filter(tracing_subscriber::filter::LevelFilter::ERROR)
}
