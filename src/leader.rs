//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas exactly one
//! reconciles and a standby takes over within seconds when the leader dies.
//!
//! The protocol is the one of client-go's `leaderelection` package:
//!
//! - A candidate takes the Lease when it does not exist (create), when it has no holder (a
//!   leader released it on shutdown), or when its record (holder, renew time, transitions, ...)
//!   has not changed for the lease duration *as observed by this process*. Expiry is measured on
//!   the local monotonic clock from the moment the current record was first read, never by
//!   comparing `renewTime` with the local wall clock, so clock skew between replicas is harmless.
//! - The leader renews every retry period. Every write is a replace carrying the resourceVersion
//!   that was read: of two candidates writing at once, one gets 409 Conflict and stays standby.
//! - A leader that has not renewed successfully for the renew deadline (shorter than the lease
//!   duration) stops its work and goes back to standby, before anybody else may take over.
//! - On graceful shutdown the leader stops its work, then releases the Lease (clears the holder),
//!   so a standby takes over on its next poll instead of after the lease duration.
//!
//! [`LeaderElection::run`] runs a piece of work (the controllers) only while leading, stopping it
//! through a [`CancellationToken`], and exposes the state through a [`watch::Receiver<LeaderState>`].

use std::{future::Future, pin::Pin, time::Duration};

use futures::FutureExt;
use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

pub const DEFAULT_LEASE_NAME: &str = "idp-bridge-leader";
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Where this process stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaderState {
    /// Not known yet (the Lease has not been read), or the election is not running.
    Unknown,
    /// This process holds the Lease and runs the work.
    Leader,
    /// Another process holds the Lease (`None`: nobody right now, or not known who).
    Standby { holder: Option<String> },
}

impl LeaderState {
    pub fn is_leader(&self) -> bool {
        matches!(self, LeaderState::Leader)
    }

    /// Leader or standby: what readiness should report. `Unknown` while the Lease cannot be read.
    pub fn is_known(&self) -> bool {
        !matches!(self, LeaderState::Unknown)
    }
}

/// Which Lease to compete for, as whom, and how fast.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// Unique per process: see [`unique_identity`].
    pub identity: String,
    /// How long a standby waits, after it last saw the record change, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// The interval between renewals, and between a standby's attempts.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// The default Lease name and timings (15 s, 10 s, 2 s) and a unique identity for `instance`.
    pub fn new(namespace: impl Into<String>, instance: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_owned(),
            identity: unique_identity(instance),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.namespace.is_empty() || self.name.is_empty() || self.identity.is_empty() {
            return Err(SettingsError::Empty);
        }
        validate_timing(self.lease_duration, self.renew_deadline, self.retry_period)
    }

    /// `leaseDurationSeconds` as written to the Lease: whole seconds, rounded up.
    fn lease_seconds(&self) -> i32 {
        let secs = self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

/// `instance` (the pod name) plus a random suffix, so that two processes never share an identity,
/// not even a restarted container with the same pod name.
pub fn unique_identity(instance: &str) -> String {
    format!("{instance}-{:012x}", rand::random::<u64>() >> 16)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("the Lease namespace, name and identity must not be empty")]
    Empty,
    #[error("the lease duration must be at least 1s")]
    LeaseTooShort,
    #[error("the renew deadline ({renew:?}) must be shorter than the lease duration ({lease:?})")]
    RenewDeadline { renew: Duration, lease: Duration },
    #[error("the retry period ({retry:?}) must be positive and at most the renew deadline ({renew:?}) / 1.2")]
    RetryPeriod { retry: Duration, renew: Duration },
}

/// The same rules as client-go: lease > renew deadline > 1.2 × retry period > 0.
pub fn validate_timing(lease: Duration, renew: Duration, retry: Duration) -> Result<(), SettingsError> {
    if lease < Duration::from_secs(1) {
        return Err(SettingsError::LeaseTooShort);
    }
    if renew >= lease {
        return Err(SettingsError::RenewDeadline { renew, lease });
    }
    if retry.is_zero() || retry.mul_f64(1.2) > renew {
        return Err(SettingsError::RetryPeriod { retry, renew });
    }
    Ok(())
}

/// What leader election reads from a Lease. Any change means its holder is alive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct LeaseRecord {
    /// `None` also for an empty `holderIdentity` (a released Lease).
    pub holder: Option<String>,
    pub lease_duration_seconds: Option<i32>,
    pub acquire_time: Option<MicroTime>,
    pub renew_time: Option<MicroTime>,
    pub transitions: i32,
}

impl LeaseRecord {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            lease_duration_seconds: spec.lease_duration_seconds,
            acquire_time: spec.acquire_time,
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    }
}

/// What to do about a Lease, given its record and since when this process has seen it unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    /// Nobody holds it (released or never held), or its holder stopped renewing: take it over.
    Acquire,
    /// This process holds it: renew.
    Renew,
    /// Someone else holds it and renewed it recently: look again later (at the latest when it
    /// would expire).
    Wait { holder: String, expires_in: Duration },
}

/// The decision rule. `observed_at` is when this process first read `record` with its current
/// content (monotonic clock); the record expires `leaseDurationSeconds` (or `default_duration`
/// when it has none) after that.
fn decide(identity: &str, record: &LeaseRecord, observed_at: Instant, now: Instant, default_duration: Duration) -> Decision {
    let Some(holder) = record.holder.as_deref() else {
        return Decision::Acquire;
    };
    if holder == identity {
        return Decision::Renew;
    }
    let duration = match record.lease_duration_seconds {
        Some(secs) if secs > 0 => Duration::from_secs(secs.unsigned_abs().into()),
        _ => default_duration,
    };
    let expires_at = observed_at + duration;
    if now >= expires_at { Decision::Acquire } else { Decision::Wait { holder: holder.to_owned(), expires_in: expires_at - now } }
}

/// Since when a record has been seen unchanged: `previous` (the last record and its observation
/// time) carries over when the content is the same, otherwise the clock starts at `now`.
fn observed_since(previous: Option<(&LeaseRecord, Instant)>, record: &LeaseRecord, now: Instant) -> Instant {
    match previous {
        Some((seen, at)) if seen == record => at,
        _ => now,
    }
}

/// The spec this process writes to take or renew `old`: holder, duration and renew time; a
/// renewal keeps the acquire time and transition count, a takeover resets the former and
/// increments the latter.
fn claimed_spec(old: Option<&LeaseSpec>, identity: &str, lease_seconds: i32, now: MicroTime) -> LeaseSpec {
    let mut spec = old.cloned().unwrap_or_default();
    let renewing = spec.holder_identity.as_deref() == Some(identity);
    if !renewing {
        spec.acquire_time = Some(now.clone());
        spec.lease_transitions = Some(if old.is_some() { spec.lease_transitions.unwrap_or(0).saturating_add(1) } else { 0 });
    }
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(lease_seconds);
    spec.renew_time = Some(now);
    spec
}

/// The spec a leader writes when it steps down: no holder and a 1 s duration, so that any
/// candidate takes over at once; transitions are kept.
fn released_spec(old: &LeaseSpec, now: MicroTime) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: None,
        renew_time: Some(now),
        lease_transitions: old.lease_transitions,
        ..old.clone()
    }
}

/// The work's task, aborted when the election is dropped (its task aborted), so the work never
/// outlives the election that allowed it.
struct WorkTask(JoinHandle<()>);

impl Drop for WorkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Attempt {
    /// This process holds the Lease now.
    Leading,
    /// Someone else does (`None`: lost a race, holder not known yet); try again after `retry_in`.
    Held { holder: Option<String>, retry_in: Option<Duration> },
}

/// How a term as leader ended.
enum TermEnd {
    /// A renewal failed for the renew deadline, or someone else took the Lease.
    Lost,
    /// Shutdown was requested; the work has stopped.
    Shutdown,
    /// The work returned on its own.
    WorkEnded,
}

/// The Lease as last read or written, and since when its record has been seen unchanged.
struct Observed {
    lease: Lease,
    record: LeaseRecord,
    since: Instant,
}

/// One candidate in the election for one Lease. Create it, take [`Self::state`], then
/// [`Self::run`] it.
pub struct LeaderElection {
    api: Api<Lease>,
    settings: LeaseSettings,
    state: watch::Sender<LeaderState>,
    observed: Option<Observed>,
    /// Not to repeat the same warning every retry period.
    last_error: Option<String>,
}

impl LeaderElection {
    /// A candidate for `settings`'s Lease; fails if the settings are invalid (see
    /// [`validate_timing`]): timings that would let two candidates lead at once.
    pub fn new(client: Client, settings: LeaseSettings) -> Result<Self, SettingsError> {
        settings.validate()?;
        let api = Api::namespaced(client, &settings.namespace);
        let (state, _) = watch::channel(LeaderState::Unknown);
        Ok(Self { api, settings, state, observed: None, last_error: None })
    }

    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// The current state, updated until the election ends (then `Unknown`).
    pub fn state(&self) -> watch::Receiver<LeaderState> {
        self.state.subscribe()
    }

    /// Competes for the Lease until `shutdown` resolves. Whenever this process becomes leader it
    /// spawns `work(stop)`; when leadership is lost it cancels `stop`, waits for the work to
    /// end (aborting it if it is still running halfway between the renew deadline and the lease
    /// duration after the last renewal, before anyone else can lead) and goes back to standby. On shutdown it stops the work (renewing meanwhile), then
    /// releases the Lease. Also returns (releasing the Lease) if the work ends on its own.
    ///
    /// Dropping the future (aborting its task) aborts the work and does not release the Lease:
    /// like a crash, a standby then takes over once the lease duration has passed.
    pub async fn run<S, F, Fut>(mut self, shutdown: S, mut work: F)
    where
        S: Future<Output = ()> + Send,
        F: FnMut(CancellationToken) -> Fut + Send,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut shutdown = std::pin::pin!(shutdown);
        info!(identity = %self.settings.identity, lease = %self.lease_ref(), "leader election started");
        loop {
            let Some(acquired_at) = self.acquire(shutdown.as_mut()).await else { break };
            if shutdown.as_mut().now_or_never().is_some() {
                self.publish(LeaderState::Unknown);
                self.release().await;
                break;
            }
            match self.lead(acquired_at, shutdown.as_mut(), &mut work).await {
                TermEnd::Lost => continue,
                TermEnd::Shutdown => {}
                TermEnd::WorkEnded => warn!(identity = %self.settings.identity, "the leader's work ended on its own; stepping down"),
            }
            // Not leader any more before the Lease says so: nobody ever sees two leaders.
            self.publish(LeaderState::Unknown);
            self.release().await;
            break;
        }
        info!(identity = %self.settings.identity, "leader election stopped");
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    fn publish(&self, state: LeaderState) {
        self.state.send_if_modified(|current| {
            if *current == state {
                return false;
            }
            match &state {
                LeaderState::Leader => info!(identity = %self.settings.identity, lease = %self.lease_ref(), "became leader"),
                LeaderState::Standby { holder } if *current == LeaderState::Leader => {
                    warn!(identity = %self.settings.identity, holder = holder.as_deref().unwrap_or(""), "lost leadership")
                }
                LeaderState::Standby { holder } => {
                    info!(identity = %self.settings.identity, holder = holder.as_deref().unwrap_or(""), "standing by")
                }
                LeaderState::Unknown => debug!(identity = %self.settings.identity, "leadership state unknown"),
            }
            *current = state;
            true
        });
    }

    fn jittered_retry(&self) -> Duration {
        self.settings.retry_period.mul_f64(1.0 + 0.2 * rand::random::<f64>())
    }

    fn warn_once(&mut self, what: &str, error: &dyn std::fmt::Display) {
        let text = format!("{what}: {error}");
        if self.last_error.as_deref() != Some(text.as_str()) {
            warn!(identity = %self.settings.identity, lease = %self.lease_ref(), error = %error, "{what}");
            self.last_error = Some(text);
        } else {
            debug!(identity = %self.settings.identity, error = %error, "{what}");
        }
    }

    /// Standby: tries every retry period until this process leads (returning when the successful
    /// attempt started) or `shutdown` resolves (`None`).
    async fn acquire<S: Future<Output = ()>>(&mut self, mut shutdown: Pin<&mut S>) -> Option<Instant> {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut() => return None,
                () = tokio::time::sleep(wait) => {}
            }
            // Not raced with shutdown: an interrupted create or replace could hold the Lease
            // without knowing it. The attempt is bounded by the renew deadline.
            let started = Instant::now();
            wait = self.jittered_retry();
            match tokio::time::timeout(self.settings.renew_deadline, self.try_acquire_or_renew(false)).await {
                Ok(Ok(Attempt::Leading)) => {
                    self.last_error = None;
                    return Some(started);
                }
                Ok(Ok(Attempt::Held { holder, retry_in })) => {
                    self.last_error = None;
                    // A lost race says nothing new about the holder, unless nothing was known.
                    if holder.is_some() || !self.state.borrow().is_known() {
                        self.publish(LeaderState::Standby { holder });
                    }
                    wait = retry_in.map_or(wait, |r| r.min(wait));
                }
                Ok(Err(e)) => self.warn_once("reading or taking the leader Lease failed", &e),
                Err(_) => self.warn_once("reading or taking the leader Lease timed out", &"no answer within the renew deadline"),
            }
        }
    }

    /// Leader: runs the work and renews every retry period, until leadership is lost, the work
    /// ends, or shutdown (then it keeps renewing until the work has stopped). Work that does not
    /// stop after a loss is aborted before any other candidate may take over.
    async fn lead<S, F, Fut>(&mut self, acquired_at: Instant, mut shutdown: Pin<&mut S>, work: &mut F) -> TermEnd
    where
        S: Future<Output = ()>,
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.publish(LeaderState::Leader);
        // Cancelled when the term ends; dropped with this future (the election aborted), it
        // cancels too, so the work never outlives the election that allowed it.
        let stop = CancellationToken::new();
        let _stop_on_drop = stop.clone().drop_guard();
        let mut task = WorkTask(tokio::spawn(work(stop.clone())));
        let stop_work = || stop.cancel();
        let mut ending: Option<TermEnd> = None;
        let mut last_renewal = acquired_at;
        let mut next_attempt = acquired_at + self.settings.retry_period;
        let mut renewing = true;
        // Once leadership is lost, the time by which the work must have stopped.
        let mut abort_at: Option<Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = shutdown.as_mut(), if ending.is_none() => {
                    info!(identity = %self.settings.identity, "shutting down: stopping the work before releasing the Lease");
                    ending = Some(TermEnd::Shutdown);
                    stop_work();
                }
                result = &mut task.0 => {
                    match result {
                        Err(e) if e.is_panic() => error!(identity = %self.settings.identity, "the leader's work panicked"),
                        _ => debug!(identity = %self.settings.identity, "the leader's work stopped"),
                    }
                    return ending.unwrap_or(TermEnd::WorkEnded);
                }
                () = tokio::time::sleep_until(abort_at.unwrap_or(next_attempt)), if abort_at.is_some() => {
                    warn!(identity = %self.settings.identity, "the work did not stop before the Lease may pass to another replica; aborting it");
                    task.0.abort();
                    abort_at = None;
                }
                () = tokio::time::sleep_until(next_attempt), if renewing => {
                    let started = Instant::now();
                    let deadline = last_renewal + self.settings.renew_deadline;
                    next_attempt = started + self.settings.retry_period;
                    let lost_to = match tokio::time::timeout_at(deadline, self.try_acquire_or_renew(true)).await {
                        Ok(Ok(Attempt::Leading)) => {
                            last_renewal = started;
                            self.last_error = None;
                            None
                        }
                        Ok(Ok(Attempt::Held { holder, .. })) => Some(holder),
                        Ok(Err(e)) => {
                            self.warn_once("renewing the leader Lease failed", &e);
                            // Retry until the deadline; an attempt at the deadline times out at once.
                            next_attempt = next_attempt.min(deadline);
                            (Instant::now() >= deadline).then_some(None)
                        }
                        Err(_) => Some(None),
                    };
                    if let Some(holder) = lost_to {
                        renewing = false;
                        self.publish(LeaderState::Standby { holder });
                        if ending.is_none() {
                            ending = Some(TermEnd::Lost);
                        }
                        stop_work();
                        // No other candidate takes over before the lease duration has passed
                        // since the last renewal; the work gets half the margin left to stop.
                        abort_at = Some(last_renewal + (self.settings.renew_deadline + self.settings.lease_duration) / 2);
                    }
                }
            }
        }
    }

    /// One attempt to take or renew the Lease. The leader first replaces its cached copy (one
    /// request); otherwise, or if that fails, it reads the Lease and decides.
    async fn try_acquire_or_renew(&mut self, leading: bool) -> Result<Attempt, kube::Error> {
        let identity = self.settings.identity.clone();
        let lease_seconds = self.settings.lease_seconds();
        let params = PostParams::default();
        if leading && let Some(seen) = self.observed.as_ref().filter(|o| o.record.holder.as_deref() == Some(identity.as_str())) {
            let mut lease = seen.lease.clone();
            lease.spec = Some(claimed_spec(lease.spec.as_ref(), &identity, lease_seconds, now()));
            match self.api.replace(&self.settings.name, &params, &lease).await {
                Ok(written) => {
                    self.observe(written);
                    return Ok(Attempt::Leading);
                }
                Err(e) => debug!(identity = %identity, error = %e, "renewing the cached Lease failed; reading it"),
            }
        }
        let Some(current) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(claimed_spec(None, &identity, lease_seconds, now())),
            };
            return match self.api.create(&params, &lease).await {
                Ok(created) => {
                    self.observe(created);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Attempt::Held { holder: None, retry_in: None }),
                Err(e) => Err(e),
            };
        };
        self.observe(current.clone());
        let seen = self.observed.as_ref().expect("just observed");
        match decide(&identity, &seen.record, seen.since, Instant::now(), self.settings.lease_duration) {
            Decision::Wait { holder, expires_in } => Ok(Attempt::Held { holder: Some(holder), retry_in: Some(expires_in) }),
            Decision::Acquire | Decision::Renew => {
                let mut lease = current;
                lease.spec = Some(claimed_spec(lease.spec.as_ref(), &identity, lease_seconds, now()));
                match self.api.replace(&self.settings.name, &params, &lease).await {
                    Ok(written) => {
                        self.observe(written);
                        Ok(Attempt::Leading)
                    }
                    // Someone else wrote first; the next read shows who.
                    Err(kube::Error::Api(s)) if s.is_conflict() => Ok(Attempt::Held { holder: None, retry_in: None }),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn observe(&mut self, lease: Lease) {
        let record = LeaseRecord::of(&lease);
        let since = observed_since(self.observed.as_ref().map(|o| (&o.record, o.since)), &record, Instant::now());
        self.observed = Some(Observed { lease, record, since });
    }

    /// Steps down: clears the holder if it is still this process. Bounded by the renew deadline.
    async fn release(&mut self) {
        let identity = self.settings.identity.clone();
        let limit = self.settings.renew_deadline;
        let attempt = async {
            for _ in 0..2 {
                let Some(seen) = self.observed.as_ref().filter(|o| o.record.holder.as_deref() == Some(identity.as_str())) else {
                    return Ok(false);
                };
                let mut lease = seen.lease.clone();
                lease.spec = Some(released_spec(&lease.spec.unwrap_or_default(), now()));
                match self.api.replace(&self.settings.name, &PostParams::default(), &lease).await {
                    Ok(written) => {
                        self.observe(written);
                        return Ok(true);
                    }
                    // Changed since it was cached: read it and release if it is still ours.
                    Err(kube::Error::Api(s)) if s.is_conflict() => match self.api.get_opt(&self.settings.name).await? {
                        Some(current) => self.observe(current),
                        None => return Ok(false),
                    },
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        };
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(true)) => info!(identity = %identity, lease = %self.lease_ref(), "released the leader Lease"),
            Ok(Ok(false)) => debug!(identity = %identity, "nothing to release: the Lease is not held by this process"),
            Ok(Err(e)) => {
                warn!(identity = %identity, error = %e, "releasing the leader Lease failed; a standby takes over when it expires")
            }
            Err(_) => warn!(identity = %identity, "releasing the leader Lease timed out; a standby takes over when it expires"),
        }
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        self.state.send_replace(LeaderState::Unknown);
    }
}

fn now() -> MicroTime {
    MicroTime(jiff::Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me-1";
    const OTHER: &str = "other-2";
    const DEFAULT: Duration = Duration::from_secs(15);

    fn record(holder: Option<&str>, duration: Option<i32>, transitions: i32) -> LeaseRecord {
        LeaseRecord {
            holder: holder.map(str::to_owned),
            lease_duration_seconds: duration,
            acquire_time: None,
            renew_time: Some(MicroTime("2026-01-01T00:00:00Z".parse().unwrap())),
            transitions,
        }
    }

    fn at(secs: f64) -> MicroTime {
        MicroTime(jiff::Timestamp::from_millisecond((secs * 1000.0) as i64).unwrap())
    }

    #[test]
    fn a_lease_without_holder_is_taken_at_once() {
        let t0 = Instant::now();
        assert_eq!(decide(ME, &record(None, Some(1), 3), t0, t0, DEFAULT), Decision::Acquire);
        let empty = LeaseRecord::of(&Lease {
            spec: Some(LeaseSpec { holder_identity: Some(String::new()), ..Default::default() }),
            ..Default::default()
        });
        assert_eq!(empty.holder, None, "an empty holderIdentity is no holder");
        assert_eq!(decide(ME, &empty, t0, t0, DEFAULT), Decision::Acquire);
    }

    #[test]
    fn our_own_lease_is_renewed_even_when_it_looks_expired() {
        let t0 = Instant::now();
        let mine = record(Some(ME), Some(15), 0);
        assert_eq!(decide(ME, &mine, t0, t0 + Duration::from_secs(1), DEFAULT), Decision::Renew);
        assert_eq!(decide(ME, &mine, t0, t0 + Duration::from_secs(60), DEFAULT), Decision::Renew);
    }

    #[test]
    fn another_holder_is_waited_for_until_its_record_is_stale_for_the_lease_duration() {
        let t0 = Instant::now();
        let theirs = record(Some(OTHER), Some(15), 2);
        assert_eq!(
            decide(ME, &theirs, t0, t0 + Duration::from_secs(4), DEFAULT),
            Decision::Wait { holder: OTHER.into(), expires_in: Duration::from_secs(11) }
        );
        assert_eq!(
            decide(ME, &theirs, t0, t0 + Duration::from_millis(14_999), DEFAULT),
            Decision::Wait { holder: OTHER.into(), expires_in: Duration::from_millis(1) }
        );
        assert_eq!(decide(ME, &theirs, t0, t0 + Duration::from_secs(15), DEFAULT), Decision::Acquire);
        assert_eq!(decide(ME, &theirs, t0, t0 + Duration::from_secs(100), DEFAULT), Decision::Acquire);
    }

    #[test]
    fn the_holders_advertised_duration_wins_over_ours() {
        let t0 = Instant::now();
        let short = record(Some(OTHER), Some(3), 0);
        assert_eq!(decide(ME, &short, t0, t0 + Duration::from_secs(3), DEFAULT), Decision::Acquire);
        // Missing or nonsensical: our own.
        for duration in [None, Some(0), Some(-5)] {
            let odd = record(Some(OTHER), duration, 0);
            assert!(matches!(decide(ME, &odd, t0, t0 + Duration::from_secs(14), DEFAULT), Decision::Wait { .. }));
            assert_eq!(decide(ME, &odd, t0, t0 + Duration::from_secs(15), DEFAULT), Decision::Acquire);
        }
    }

    #[test]
    fn the_expiry_clock_restarts_whenever_the_record_changes() {
        let t0 = Instant::now();
        let first = record(Some(OTHER), Some(15), 0);
        // First sight: the clock starts now, whatever renewTime says (clock skew is harmless).
        assert_eq!(observed_since(None, &first, t0), t0);
        // Unchanged 10 s later: still counting from t0.
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(observed_since(Some((&first, t0)), &first, t10), t0);
        assert_eq!(decide(ME, &first, t0, t10 + Duration::from_secs(5), DEFAULT), Decision::Acquire);
        // Renewed (new renewTime), or taken over (new holder or transitions): the clock restarts.
        let mut renewed = first.clone();
        renewed.renew_time = Some(at(1_000.0));
        assert_eq!(observed_since(Some((&first, t0)), &renewed, t10), t10);
        assert!(matches!(decide(ME, &renewed, t10, t10 + Duration::from_secs(5), DEFAULT), Decision::Wait { .. }));
        let taken = record(Some("third"), Some(15), 1);
        assert_eq!(observed_since(Some((&first, t0)), &taken, t10), t10);
    }

    #[test]
    fn a_takeover_counts_a_transition_and_a_renewal_does_not() {
        let created = claimed_spec(None, ME, 15, at(100.0));
        assert_eq!(created.holder_identity.as_deref(), Some(ME));
        assert_eq!(created.lease_duration_seconds, Some(15));
        assert_eq!(created.acquire_time, Some(at(100.0)));
        assert_eq!(created.renew_time, Some(at(100.0)));
        assert_eq!(created.lease_transitions, Some(0));

        let renewed = claimed_spec(Some(&created), ME, 15, at(102.0));
        assert_eq!(renewed.acquire_time, Some(at(100.0)), "a renewal keeps the acquire time");
        assert_eq!(renewed.renew_time, Some(at(102.0)));
        assert_eq!(renewed.lease_transitions, Some(0));

        let taken = claimed_spec(Some(&renewed), OTHER, 3, at(120.0));
        assert_eq!(taken.holder_identity.as_deref(), Some(OTHER));
        assert_eq!(taken.lease_duration_seconds, Some(3));
        assert_eq!(taken.acquire_time, Some(at(120.0)));
        assert_eq!(taken.lease_transitions, Some(1));

        let released = released_spec(&taken, at(130.0));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.renew_time, Some(at(130.0)));
        assert_eq!(released.lease_transitions, Some(1), "releasing is not a transition");
        let t0 = Instant::now();
        assert_eq!(
            decide(ME, &LeaseRecord::of(&Lease { spec: Some(released.clone()), ..Default::default() }), t0, t0, DEFAULT),
            Decision::Acquire
        );
        assert_eq!(claimed_spec(Some(&released), ME, 15, at(131.0)).lease_transitions, Some(2));
    }

    #[test]
    fn timings_are_checked_like_client_go() {
        let s = Duration::from_secs;
        assert_eq!(validate_timing(s(15), s(10), s(2)), Ok(()));
        assert_eq!(validate_timing(s(3), s(2), Duration::from_millis(500)), Ok(()));
        assert_eq!(
            validate_timing(Duration::from_millis(900), Duration::from_millis(500), Duration::from_millis(100)),
            Err(SettingsError::LeaseTooShort)
        );
        assert!(matches!(validate_timing(s(10), s(10), s(2)), Err(SettingsError::RenewDeadline { .. })));
        assert!(matches!(validate_timing(s(15), s(10), Duration::ZERO), Err(SettingsError::RetryPeriod { .. })));
        assert!(matches!(validate_timing(s(15), s(10), s(9)), Err(SettingsError::RetryPeriod { .. })));
        let mut settings = LeaseSettings::new("ops", "pod");
        assert_eq!(settings.validate(), Ok(()));
        assert_eq!(settings.lease_seconds(), 15);
        settings.lease_duration = Duration::from_millis(2500);
        assert_eq!(settings.lease_seconds(), 3, "rounded up, never shorter than configured");
        settings.name.clear();
        assert_eq!(settings.validate(), Err(SettingsError::Empty));
    }

    #[test]
    fn states() {
        assert!(!LeaderState::Unknown.is_known());
        assert!(LeaderState::Leader.is_known() && LeaderState::Leader.is_leader());
        assert!(LeaderState::Standby { holder: None }.is_known());
        assert!(!LeaderState::Standby { holder: Some(OTHER.into()) }.is_leader());
    }
}
