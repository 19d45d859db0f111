//! The development environment: emulators of the external APIs and a local Kubernetes control
//! plane. The demo and the test suite use it; the operator itself never does.

pub mod auth0;
pub mod azure;
pub mod control_plane;
pub mod stack;
pub mod tls;
pub mod unified;

use std::sync::{Mutex, MutexGuard};

/// Locks emulator state; a handler that panicked must not wedge every later test request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `n` random ASCII letters and digits, for ids and opaque tokens.
fn random_alnum(n: usize) -> String {
    use rand::{Rng, distr::Alphanumeric};
    rand::rng().sample_iter(Alphanumeric).take(n).map(char::from).collect()
}
