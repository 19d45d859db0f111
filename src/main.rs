use std::process::ExitCode;

use clap::Parser;
use idp_bridge::{
    check,
    config::{Cli, Command, Config},
    crd, operator, rotation, telemetry,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    // kube and reqwest both use rustls; pick one crypto provider for the whole process.
    idp_bridge::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Version => {
            println!("{}", version_line());
            ExitCode::SUCCESS
        }
        Command::Crds { out_dir } => print_crds(out_dir.as_deref()),
        Command::Check(args) => match check::run(&args).await {
            Ok((report, code)) => {
                match args.output {
                    check::OutputFormat::Text => print!("{}", check::render(&report)),
                    check::OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report).expect("report serializes")),
                }
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(check::exit::INVALID)
            }
        },
        Command::Rotate(args) => {
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => return fail(&format!("connecting to Kubernetes: {e}")),
            };
            match rotation::request::rotate(client, &args.target, args.revoke).await {
                Ok(line) => {
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e),
            }
        }
        Command::Run(args) => {
            telemetry::init(args.log_format);
            let config = match Config::try_from(*args) {
                Ok(c) => c,
                Err(e) => return fail(&e),
            };
            let client = match kube::Client::try_default().await {
                Ok(c) => c,
                Err(e) => return fail(&format!("connecting to Kubernetes: {e}")),
            };
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            match operator::run(client, config, shutdown).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

/// The crate version and, when the build names it (scripts/image.sh and the Dockerfile set
/// IDP_BRIDGE_GIT_COMMIT), the git commit it was built from.
fn version_line() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match option_env!("IDP_BRIDGE_GIT_COMMIT") {
        Some(commit) if !commit.is_empty() => format!("idp-bridge {version} (commit {commit})"),
        _ => format!("idp-bridge {version}"),
    }
}

fn print_crds(out_dir: Option<&std::path::Path>) -> ExitCode {
    for definition in crd::all() {
        let yaml = crd::to_yaml(&definition);
        match out_dir {
            None => print!("{yaml}"),
            Some(dir) => {
                let path = dir.join(crd::file_name(&definition));
                if let Err(e) = std::fs::write(&path, yaml) {
                    return fail(&format!("writing {}: {e}", path.display()));
                }
            }
        }
    }
    ExitCode::SUCCESS
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::FAILURE
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}
