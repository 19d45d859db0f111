//! The development environment: emulators of the external APIs and a local Kubernetes control
//! plane. The demo and the test suite use it; the operator itself never does.

pub mod auth0;
pub mod azure;
pub mod bench;
pub mod cloudflare;
pub mod control_plane;
pub mod fault_suite;
pub mod kit;
pub mod logto;
pub mod stack;
pub mod tls;
mod tokens;
pub mod unified;

use std::{
    ops::RangeInclusive,
    sync::{Mutex, MutexGuard},
};

use axum::response::Response;

/// A handler's outcome where an early return is a whole (error) answer.
type Reply = Result<Response, Response>;

fn reply(result: Reply) -> Response {
    result.unwrap_or_else(|e| e)
}

/// Locks emulator state; a handler that panicked must not wedge every later test request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` random ASCII letters and digits, for ids and opaque tokens.
fn random_alnum(n: usize) -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng().sample_iter(Alphanumeric).take(n).map(char::from).collect()
}

/// A query string's decoded pairs, in order.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect()
}

/// The first value of `key` in decoded query pairs.
fn query_value<'a>(query: &'a [(String, String)], key: &str) -> Option<&'a str> {
    query.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The integer value of `key` when present and within `range`; else the raw value, for the
/// vendor's error message.
fn query_int<'a>(query: &'a [(String, String)], key: &str, range: RangeInclusive<usize>) -> Result<Option<usize>, &'a str> {
    let Some(raw) = query_value(query, key) else {
        return Ok(None);
    };
    match raw.parse::<usize>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(raw),
    }
}
