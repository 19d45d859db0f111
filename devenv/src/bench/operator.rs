//! The operator as a separate process, started exactly as in production (`idp-bridge run`,
//! KUBECONFIG, endpoint overrides and CA bundle), so that its memory and CPU are its own and can
//! be read from `/proc/<pid>`.

use std::{
    net::SocketAddr,
    path::Path,
    process::{ExitStatus, Stdio},
    time::{Duration, Instant},
};

use idp_bridge::{broker_hosts::BrokerHosts, upstream::EndpointOverrides};
use tokio::process::{Child, Command};

use super::{BenchResult, fleet::OPERATOR_NAMESPACE};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Resident memory of a process, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss: u64,
    /// `VmHWM`: the peak resident size so far.
    pub hwm: u64,
}

pub struct OperatorProcess {
    child: Child,
    pid: u32,
    http: SocketAddr,
    client: reqwest::Client,
}

impl OperatorProcess {
    /// Starts `binary run` against the cluster of `kubeconfig`, without leader election, logging
    /// (JSON) to `log`, and waits until its /readyz answers 200.
    pub async fn start(
        binary: &Path,
        kubeconfig: &Path,
        upstreams: (&EndpointOverrides, &BrokerHosts),
        ca_bundle: &Path,
        log: &Path,
    ) -> BenchResult<Self> {
        std::fs::File::create(log)?;
        Self::start_with_args(binary, kubeconfig, upstreams, ca_bundle, log, &["--leader-election=false".to_owned()]).await
    }

    /// As [`start`](Self::start), with `args` in place of `--leader-election=false` (they
    /// decide leader election and may set any other flag); appending to `log`.
    pub async fn start_with_args(
        binary: &Path,
        kubeconfig: &Path,
        upstreams: (&EndpointOverrides, &BrokerHosts),
        ca_bundle: &Path,
        log: &Path,
        args: &[String],
    ) -> BenchResult<Self> {
        let (overrides, broker_hosts) = upstreams;
        let http = free_loopback_address()?;
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(binary)
            .arg("run")
            .arg(format!("--namespace={OPERATOR_NAMESPACE}"))
            .arg(format!("--endpoint-overrides={overrides}"))
            .arg(format!("--broker-hosts={broker_hosts}"))
            .arg(format!("--ca-bundle={}", ca_bundle.display()))
            .args(args)
            .arg(format!("--http-address={http}"))
            .arg("--log-format=json")
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", binary.display()))?;
        let pid = child.id().ok_or("the operator exited at once")?;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        let mut operator = Self { child, pid, http, client };
        operator.wait_ready().await?;
        Ok(operator)
    }

    async fn wait_ready(&mut self) -> BenchResult<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return Err(format!("the operator exited during start-up ({status}); see its log").into());
            }
            let ready = self.client.get(format!("http://{}/readyz", self.http)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("the operator's /readyz did not answer 200 within {READY_TIMEOUT:?}").into())
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn memory(&self) -> BenchResult<Memory> {
        Self::memory_of(self.pid)
    }

    pub fn cpu_seconds(&self) -> BenchResult<f64> {
        Self::cpu_seconds_of(self.pid)
    }

    /// VmRSS and VmHWM from `/proc/<pid>/status`.
    fn memory_of(pid: u32) -> BenchResult<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> BenchResult<u64> {
            let line = status.lines().find(|l| l.starts_with(name)).ok_or_else(|| format!("/proc status has no {name}"))?;
            let kib: u64 = line.split_whitespace().nth(1).ok_or("empty status field")?.parse()?;
            Ok(kib * 1024)
        };
        Ok(Memory { rss: field("VmRSS:")?, hwm: field("VmHWM:")? })
    }

    /// User plus system CPU time so far, from `/proc/<pid>/stat`.
    fn cpu_seconds_of(pid: u32) -> BenchResult<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name is in parentheses and may hold spaces: fields count from after it.
        let after_name = stat.rsplit_once(')').ok_or("malformed /proc stat")?.1;
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat(5); the state (field 3) is fields[0].
        let ticks: u64 =
            fields.get(11).ok_or("short /proc stat")?.parse::<u64>()? + fields.get(12).ok_or("short /proc stat")?.parse::<u64>()?;
        Ok(ticks as f64 / clock_ticks_per_second())
    }

    /// Its Prometheus exposition.
    pub async fn metrics(&self) -> BenchResult<String> {
        Ok(self.client.get(format!("http://{}/metrics", self.http)).send().await?.error_for_status()?.text().await?)
    }

    /// Reconciles so far (`idpbridge_reconcile_total`, every result).
    pub async fn reconciles(&self) -> BenchResult<f64> {
        Ok(sum_of(&self.metrics().await?, "idpbridge_reconcile_total"))
    }

    /// SIGKILL, as a node failure or the OOM killer would: no cleanup, no Lease released.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL.
    pub async fn stop(mut self) {
        if self.exited().is_some() {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.pid) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child, not
            // yet reaped (try_wait above saw it running), so it cannot have been reused.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(STOP_GRACE, self.child.wait()).await.is_err() {
            let _ = self.child.kill().await;
        }
    }
}

/// The sum of every sample of `metric` (all label sets) in a Prometheus text exposition.
pub fn sum_of(exposition: &str, metric: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf(3) only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// A loopback address with a port that was free a moment ago.
fn free_loopback_address() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(("127.0.0.1", 0))?.local_addr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set_of_one_metric_only() {
        let text = "# HELP idpbridge_reconcile Reconciles\nidpbridge_reconcile_total{result=\"ok\"} 12\nidpbridge_reconcile_total{result=\"error\"} 3\nidpbridge_reconcile_duration_seconds_count{result=\"ok\"} 12\n";
        assert_eq!(sum_of(text, "idpbridge_reconcile_total"), 15.0);
        assert_eq!(sum_of(text, "idpbridge_missing_total"), 0.0);
    }

    #[test]
    fn reads_its_own_memory_and_cpu_the_same_way() {
        let own = OperatorProcess::memory_of(std::process::id()).unwrap();
        assert!(own.rss > 0 && own.hwm >= own.rss);
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        assert!(OperatorProcess::cpu_seconds_of(std::process::id()).unwrap() > 0.0);
    }
}
