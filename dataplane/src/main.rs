//! `patronus-dataplane`: the Patronus SD-WAN gateway data plane.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use patronus_core::config::{Config, EMBEDDED_DEFAULT};
use patronus_core::dpi::{self, Limits};
use patronus_dataplane::resolver::Resolver;
use patronus_dataplane::runtime::{self, RunOptions};
use patronus_proto::logging::{self, LogArgs};

/// DPDK poll-mode SD-WAN gateway data plane.
///
/// Runs standalone from a TOML configuration (the embedded default when none
/// is given). EAL arguments come from the config's `dpdk.eal_args` and from
/// anything after `--`. SIGHUP reloads the file; SIGINT/SIGTERM stop cleanly.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(flatten)]
    log: LogArgs,
    /// Extra EAL arguments (after `--`).
    #[arg(last = true, value_name = "EAL_ARGS")]
    eal_args: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify the flows of capture files offline (the workers' classifier)
    /// and write one CSV row per TCP/UDP flow.
    Classify(ClassifyArgs),
}

#[derive(Debug, Args)]
struct ClassifyArgs {
    /// Capture files (pcap or pcapng), processed in order by one process.
    #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
    pcap: Vec<PathBuf>,
    /// Output CSV file (`-` for standard output).
    #[arg(long, value_name = "OUT")]
    csv: PathBuf,
    /// Extra application definitions (TOML, the catalogue's schema).
    #[arg(long, value_name = "FILE")]
    applications: Option<PathBuf>,
    /// Payload packets inspected per flow.
    #[arg(long, default_value_t = Limits::default().max_packets)]
    max_packets: u16,
    /// Payload bytes inspected per flow.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    max_bytes: u32,
}

/// `patronus-dataplane classify`.
fn classify(args: &ClassifyArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let user = match &args.applications {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            dpi::apps::parse(&text).with_context(|| path.display().to_string())?
        }
        None => Vec::new(),
    };
    let classifier = dpi::Classifier::with_user_apps(&user)?;
    let limits = Limits {
        max_packets: args.max_packets,
        max_bytes: args.max_bytes,
    };
    let started = std::time::Instant::now();
    let totals = if args.csv.as_os_str() == "-" {
        dpi::offline::classify_files(
            &classifier,
            limits,
            &args.pcap,
            &mut std::io::stdout().lock(),
        )?
    } else {
        let mut file = std::fs::File::create(&args.csv)
            .with_context(|| format!("{}: cannot create", args.csv.display()))?;
        dpi::offline::classify_files(&classifier, limits, &args.pcap, &mut file)?
    };
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "classified {} flows from {} files ({} frames, {} bytes, {} not TCP/UDP) in {:.3} s: {:.0} packets/s, {:.3} Gbit/s",
        totals.flows,
        totals.files,
        totals.frames,
        totals.bytes,
        totals.skipped,
        secs,
        totals.frames as f64 / secs,
        totals.bytes as f64 * 8.0 / secs / 1e9,
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log.log_format);
    if let Some(Command::Classify(args)) = &cli.command {
        return match classify(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("patronus-dataplane classify: {err:#}");
                ExitCode::from(2)
            }
        };
    }
    if cli.print_default_config {
        print!("{EMBEDDED_DEFAULT}");
        return ExitCode::SUCCESS;
    }
    let loaded = match &cli.config {
        Some(path) => Config::from_file(path),
        None => Config::from_toml(EMBEDDED_DEFAULT),
    };
    let config = match loaded {
        Ok(config) => config,
        Err(err) => {
            eprintln!("patronus-dataplane: {err}");
            return ExitCode::from(2);
        }
    };
    // Endpoint host names are resolved before the configuration is checked
    // (it names the field of one that does not resolve), and kept fresh.
    let (resolver, resolver_thread) = match Resolver::start(&config.dns) {
        Ok(started) => started,
        Err(err) => {
            eprintln!("patronus-dataplane: {err:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(err) = config.validate_resolved(1, resolver.resolve(config.host_names())) {
        eprintln!("patronus-dataplane: {err}");
        return ExitCode::from(2);
    }
    if cli.check {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let opts = RunOptions {
        config,
        config_path: cli.config,
        extra_eal_args: cli.eal_args,
        resolver,
    };
    let ran = runtime::run(opts);
    drop(resolver_thread);
    match ran {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("patronus-dataplane: {err:#}");
            ExitCode::FAILURE
        }
    }
}
