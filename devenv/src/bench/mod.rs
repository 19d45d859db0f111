//! The benchmark behind `idp-bridge-bench`: a fleet of connections on the real control plane,
//! the operator as a separate process, and the measurements the issue "Benchmark at 1,000
//! connections and 10,000 unrelated Secrets" asks for.

pub mod fleet;
pub mod floor;
pub mod operator;
pub mod phases;
pub mod report;
pub mod stats;
pub mod watch;

/// Errors of the benchmark itself (not of the operator, whose misbehaviour is a result).
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;
