//! The bench's own watch on every AzureAdConnection: readiness for the phases, and each status
//! write (a new resourceVersion) with whether it was a refresh (lastValidatedTime moved) or a
//! write between refreshes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt as _;
use idp_bridge::crd::{AzureAdConnection, conditions};
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::task::JoinHandle;

/// What the bench needs of one connection's latest version.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub resource_version: String,
    /// Ready=True for the current generation.
    pub ready: bool,
    /// The Ready condition's reason (for the report when not everything gets Ready).
    pub ready_reason: Option<String>,
    pub last_validated: Option<String>,
    /// The broker object's id, once synced.
    pub broker_id: Option<String>,
}

/// One observed write to a connection.
#[derive(Clone, Copy, Debug)]
pub struct Write {
    pub at: Instant,
    /// lastValidatedTime changed: the write of a periodic refresh (or of any validation).
    pub refresh: bool,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Observed>,
    writes: Vec<Write>,
    errors: usize,
}

#[derive(Clone)]
pub struct ConnectionWatch {
    state: Arc<Mutex<State>>,
}

impl ConnectionWatch {
    /// Starts watching every AzureAdConnection in the cluster; the task ends with the runtime.
    pub fn start(client: &Client) -> (Self, JoinHandle<()>) {
        let watch = Self { state: Arc::default() };
        let events = watcher(Api::<AzureAdConnection>::all(client.clone()), watcher::Config::default()).default_backoff();
        let recorder = watch.clone();
        let task = tokio::spawn(events.for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(conn) | watcher::Event::InitApply(conn)) => recorder.record(&conn),
                Ok(_) => {}
                Err(_) => recorder.lock().errors += 1,
            }
            std::future::ready(())
        }));
        (watch, task)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, conn: &AzureAdConnection) {
        let observed = observe(conn);
        let key = format!("{}/{}", conn.namespace().unwrap_or_default(), conn.name_any());
        let mut state = self.lock();
        let previous = state.objects.insert(key, observed.clone());
        if let Some(previous) = previous
            && previous.resource_version != observed.resource_version
        {
            let refresh = previous.last_validated != observed.last_validated;
            state.writes.push(Write { at: Instant::now(), refresh });
        }
    }

    /// The latest version of `key` (`namespace/name`).
    pub fn get(&self, key: &str) -> Option<Observed> {
        self.lock().objects.get(key).cloned()
    }

    /// How many of `keys` are Ready now.
    pub fn ready_count<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> usize {
        let state = self.lock();
        keys.into_iter().filter(|k| state.objects.get(*k).is_some_and(|o| o.ready)).count()
    }

    /// Writes seen in `[from, to)`.
    pub fn writes_between(&self, from: Instant, to: Instant) -> Vec<Write> {
        self.lock().writes.iter().filter(|w| w.at >= from && w.at < to).copied().collect()
    }

    /// Watch errors so far (each one a relist, during which writes may be missed).
    pub fn errors(&self) -> usize {
        self.lock().errors
    }
}

fn observe(conn: &AzureAdConnection) -> Observed {
    let status = conn.status.as_ref();
    let ready = status.and_then(|s| conditions::find(&s.conditions, conditions::READY));
    let current = |generation: Option<i64>| generation == conn.metadata.generation;
    Observed {
        resource_version: conn.resource_version().unwrap_or_default(),
        ready: ready.is_some_and(|c| c.status == "True" && current(c.observed_generation))
            && current(status.and_then(|s| s.observed_generation)),
        ready_reason: ready.map(|c| c.reason.clone()),
        last_validated: status.and_then(|s| s.last_validated_time.as_ref()).map(|t| t.0.to_string()),
        broker_id: status.and_then(|s| s.broker.as_ref()).and_then(|b| b.id.clone()),
    }
}
