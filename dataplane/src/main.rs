//! `patronus-dataplane`: the Patronus SD-WAN gateway data plane.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use patronus_dataplane::config::{Config, EMBEDDED_DEFAULT};
use patronus_dataplane::runtime::{self, RunOptions};
use tracing_subscriber::EnvFilter;

/// DPDK poll-mode SD-WAN gateway data plane.
///
/// Runs standalone from a TOML configuration (the embedded default when none
/// is given). EAL arguments come from the config's `dpdk.eal_args` and from
/// anything after `--`. SIGHUP reloads the file; SIGINT/SIGTERM stop cleanly.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Extra EAL arguments (after `--`).
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal_args: Vec<String>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{EMBEDDED_DEFAULT}");
        return ExitCode::SUCCESS;
    }
    let loaded = match &cli.config {
        Some(path) => Config::from_file(path),
        None => Config::from_toml(EMBEDDED_DEFAULT),
    };
    let config = match loaded.and_then(|c| c.validate(1).map(|_| c)) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("patronus-dataplane: {err}");
            return ExitCode::from(2);
        }
    };
    if cli.check {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let opts = RunOptions {
        config,
        config_path: cli.config,
        extra_eal_args: cli.eal_args,
    };
    match runtime::run(opts) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("patronus-dataplane: {err:#}");
            ExitCode::FAILURE
        }
    }
}
