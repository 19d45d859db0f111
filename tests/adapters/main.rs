//! Tier 2: the Azure and broker clients, and the `check` CLI, over HTTPS against the emulators.

mod common;

mod auth0;
mod azure;
mod check_cli;
mod cloudflare;
mod conformance;
mod emulators;
mod hostile;
mod logto;
mod passwords;
mod registration;
mod unified;
