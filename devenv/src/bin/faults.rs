//! `idp-bridge-faults`: the fault suite. The operator, as a separate process, runs a fleet of
//! connections over all four brokers on a real control plane with emulated Azure and brokers,
//! through each scenario of `idp_bridge_devenv::fault_suite::scenarios` in turn. Prints a table
//! per scenario (requests per upstream per connection per minute, status writes, Events, and
//! each invariant) and writes them as JSON; exits non-zero when an invariant fails.
//! `scripts/faults.sh` runs it.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use idp_bridge_devenv::{
    bench::report::{Report, Verdict},
    fault_suite::{Stage, scenarios},
};
use serde_json::json;

#[derive(Parser, Debug)]
#[command(name = "idp-bridge-faults", about = "Runs the operator through upstream faults, kills and a failover")]
struct Args {
    /// The operator binary, run as `BINARY run`.
    #[arg(long)]
    operator_bin: PathBuf,
    /// Connections, spread round-robin over Auth0, Cloudflare, Logto and Unified.to.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Namespaces the connections are spread over.
    #[arg(long, default_value_t = 2)]
    namespaces: usize,
    /// Operator kills in the SIGKILL scenario.
    #[arg(long, default_value_t = 50)]
    kills: usize,
    /// How long the Azure login stays unreachable (more than two refresh intervals of 1 min).
    #[arg(long, default_value_t = 150)]
    azure_outage_secs: u64,
    /// Runs only the scenarios whose name contains this text (case-insensitive).
    #[arg(long)]
    only: Option<String>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "target/faults.json")]
    out: PathBuf,
    /// Where the operator logs (every process of the suite appends to it).
    #[arg(long, default_value = "target/faults-operator.log")]
    operator_log: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let reports = run(&args).await;
    let failed = reports.iter().any(|(_, r)| r.failed());
    for (name, report) in &reports {
        println!("\n== {name}\n{}", report.table());
    }
    let json: serde_json::Map<String, serde_json::Value> =
        reports.iter().map(|(name, r)| ((*name).to_owned(), serde_json::to_value(r).unwrap_or_default())).collect();
    match std::fs::write(&args.out, serde_json::to_string_pretty(&json).unwrap_or_default()) {
        Ok(()) => println!("written to {}", args.out.display()),
        Err(e) => eprintln!("writing {}: {e}", args.out.display()),
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// How long kube-apiserver stays down mid-rotation: longer than the operator's 2 s request
/// timeout, so reconciles in flight fail rather than wait.
const APISERVER_OUTAGE: Duration = Duration::from_secs(5);

fn note(message: &str) {
    eprintln!("[faults] {message}");
}

async fn run(args: &Args) -> Vec<(&'static str, Report)> {
    let profile = json!({"connections": args.connections, "namespaces": args.namespaces, "kills": args.kills});
    let mut reports = Vec::new();
    note(&format!("starting the control plane, the emulators and {} connections", args.connections));
    let mut stage = match Stage::start(&args.operator_bin, &args.operator_log, args.connections, args.namespaces).await {
        Ok(stage) => stage,
        Err(e) => {
            let mut report = Report { profile, ..Report::default() };
            report.row("fleet Ready", "all", format!("error: {e}"), Verdict::Fail, None);
            return vec![("setup", report)];
        }
    };
    let outage = Duration::from_secs(args.azure_outage_secs);
    let names = [
        "broker 5xx mid-rotation",
        "lost answers",
        "Graph failing with fresh request ids",
        "management credentials refused",
        "operator SIGKILLed",
        "leader failover mid-rotation",
        "API server restarted mid-rotation",
        "Azure login unreachable",
    ];
    let wanted = |name: &str| args.only.as_ref().is_none_or(|only| name.to_lowercase().contains(&only.to_lowercase()));
    for (index, name) in names.into_iter().enumerate().filter(|(_, name)| wanted(name)) {
        note(name);
        let mut report = Report { profile: profile.clone(), ..Report::default() };
        let outcome = match index {
            0 => scenarios::broker_5xx_mid_rotation(&mut stage, &mut report).await,
            1 => scenarios::lost_answers(&mut stage, &mut report).await,
            2 => scenarios::graph_fresh_request_ids(&mut stage, &mut report).await,
            3 => scenarios::management_credentials_refused(&mut stage, &mut report).await,
            4 => scenarios::sigkill_trials(&mut stage, &mut report, args.kills).await,
            5 => scenarios::leader_failover_mid_rotation(&mut stage, &mut report).await,
            6 => scenarios::apiserver_restart_mid_rotation(&mut stage, &mut report, APISERVER_OUTAGE).await,
            _ => scenarios::azure_login_unreachable(&mut stage, &mut report, outage).await,
        };
        if let Err(e) = outcome {
            report.row("scenario completed", "no error", format!("error: {e}"), Verdict::Fail, None);
        }
        let exited = stage.bench.operator.exited();
        report.row(
            "operator process",
            "keeps running",
            exited.map_or("running".into(), |s| format!("exited: {s}")),
            Verdict::invariant(exited.is_none()),
            None,
        );
        reports.push((name, report));
    }
    stage.bench.operator.kill().await;
    reports
}
