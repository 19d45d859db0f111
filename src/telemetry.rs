//! Logging through `tracing`: text by default, JSON by flag, filtered by `RUST_LOG`.

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Installs the global subscriber. Call once, from main.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube_runtime=warn,kube_client=warn,hyper=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry.with(fmt::layer().with_target(false)).init(),
        LogFormat::Json => registry.with(fmt::layer().json().flatten_event(true).with_current_span(true)).init(),
    }
    std::panic::set_hook(Box::new(log_panic_without_payload));
}

/// Replaces the default panic hook, which prints the payload to stderr: a payload is whatever
/// string the panicking code formatted, and could hold a secret. The location is enough to find
/// the bug; the reconcile that panicked logs its connection (see `controller::guard`).
fn log_panic_without_payload(info: &std::panic::PanicHookInfo<'_>) {
    let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
    tracing::error!(%location, "panic (message withheld: it could carry a secret)");
}
