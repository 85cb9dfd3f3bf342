//! The `kmflow` command line: parse, load config, run, and print the whole cause chain on error.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use kmflow::config::Config;
use kmflow_dataflows::gen::{GenConfig, Generator};

#[derive(Parser)]
#[command(
    name = "kmflow",
    version,
    about = "Streaming analytics for EVE Online killmails"
)]
struct Cli {
    /// A TOML file layered over the defaults (see config/default.toml).
    #[arg(long, global = true, env = "KMFLOW_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct GenArgs {
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Killmails per second; 0 for full speed.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Write JSON Lines to this file instead of stdout.
    #[arg(long, conflicts_with = "topic")]
    out: Option<PathBuf>,
    /// Produce to this Kafka topic instead of writing JSON Lines.
    #[arg(long)]
    topic: Option<String>,
    /// Defaults to kafka.brokers from the configuration.
    #[arg(long)]
    brokers: Option<String>,
    /// A librdkafka producer property, key=value (repeatable).
    #[arg(short = 'X', value_name = "KEY=VALUE")]
    producer_option: Vec<String>,
}

/// `[cluster]` from the command line (over the configuration file and environment).
#[derive(clap::Args)]
struct RunArgs {
    /// This process's index in the cluster (cluster.process).
    #[arg(long)]
    process: Option<usize>,
    /// Every process's timely address, host:port, comma-separated (cluster.addresses).
    #[arg(long, value_delimiter = ',')]
    peers: Option<Vec<String>>,
    /// Every process's API URL, comma-separated (cluster.apis).
    #[arg(long, value_delimiter = ',')]
    apis: Option<Vec<String>>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline and the API until stopped (SIGINT/SIGTERM).
    Run(RunArgs),
    /// Produce killmails from files to a Kafka topic.
    Import {
        /// EVE Ref .tar.bz2 archives, .jsonl files, .json files (arrays or single killmails),
        /// or directories of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long)]
        topic: String,
        /// Defaults to kafka.brokers from the configuration.
        #[arg(long)]
        brokers: Option<String>,
        /// Also produce records that do not decode (kmflow will dead-letter them).
        #[arg(long)]
        send_invalid: bool,
        /// Seconds to wait for a broker to answer before giving up.
        #[arg(long, default_value_t = 10)]
        connect_timeout: u64,
        /// A librdkafka producer property, key=value (repeatable), e.g. -X linger.ms=50.
        #[arg(short = 'X', value_name = "KEY=VALUE")]
        producer_option: Vec<String>,
    },
    /// Generate realistic killmails to JSON Lines (stdout or --out) or to a Kafka topic.
    Gen(GenArgs),
    /// Print the API's OpenAPI 3.1 document (as served at /openapi.json).
    Openapi,
    /// Hand key groups over to a new number of cluster processes: copies the stopped
    /// cluster's states (one per old process, in order) into new states (one per new
    /// process). Nothing is read again from Kafka.
    Rescale {
        /// The old processes' state directories, in process order (comma-separated).
        #[arg(long, value_delimiter = ',', required = true)]
        from: Vec<PathBuf>,
        /// The new processes' state directories, in process order (comma-separated; must
        /// not exist or be empty).
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<PathBuf>,
    },
}

fn main() {
    if let Err(e) = init_logs() {
        eprintln!("kmflow: error: {e}");
        std::process::exit(2);
    }
    if let Err(e) = real_main() {
        eprintln!("kmflow: error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}

/// Logs go to stderr: plain text by default (coloured only on a terminal), one JSON object
/// per line with `KMFLOW_LOG_FORMAT=json`; `KMFLOW_LOG` filters (e.g. `info,kmflow=debug`).
fn init_logs() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("KMFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (stderr on a full disk) is dropped: tracing's own
    // report of it would panic the thread that logged (eprintln! on the same stderr).
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match std::env::var("KMFLOW_LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().with_current_span(false).init(),
        Ok("text") | Err(std::env::VarError::NotPresent) => {
            logs.with_ansi(std::io::stderr().is_terminal()).init()
        }
        Ok(other) => anyhow::bail!("KMFLOW_LOG_FORMAT must be text or json, got {other:?}"),
        Err(e) => anyhow::bail!("KMFLOW_LOG_FORMAT: {e}"),
    }
    Ok(())
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let flags = match &cli.command {
        Command::Run(a) => kmflow::config::ClusterFlags {
            addresses: a.peers.clone(),
            process: a.process,
            apis: a.apis.clone(),
        },
        _ => Default::default(),
    };
    let config = Arc::new(Config::load_with(cli.config.as_deref(), &flags)?);
    match cli.command {
        Command::Run(_) => kmflow::app::run(config),
        Command::Rescale { from, to } => {
            let t0 = Instant::now();
            let copied =
                kmflow::cluster::rescale::rescale(&from, &to, config.state.block_cache_mb)?;
            for (dir, keys) in to.iter().zip(&copied.keys) {
                println!("kmflow: {} keys -> {}", keys, dir.display());
            }
            println!(
                "kmflow: {} processes -> {} at checkpoint {} in {:.1}s; start the new cluster with cluster.addresses listing {} processes",
                from.len(),
                to.len(),
                copied.epoch,
                t0.elapsed().as_secs_f64(),
                to.len()
            );
            Ok(())
        }
        Command::Openapi => {
            print!("{}", kmflow::api::openapi_document());
            Ok(())
        }
        Command::Import {
            paths,
            topic,
            brokers,
            send_invalid,
            connect_timeout,
            producer_option,
        } => {
            let brokers = brokers.unwrap_or_else(|| config.kafka.brokers.clone());
            let report = kmflow::import::import(
                &paths,
                &brokers,
                &topic,
                send_invalid,
                &producer_option,
                Duration::from_secs(connect_timeout),
            )?;
            if report.failed > 0 {
                anyhow::bail!("{} records failed to import", report.failed);
            }
            Ok(())
        }
        Command::Gen(args) => {
            let brokers = args
                .brokers
                .clone()
                .unwrap_or_else(|| config.kafka.brokers.clone());
            gen(args, brokers)
        }
    }
}

fn gen(args: GenArgs, brokers: String) -> anyhow::Result<()> {
    let GenArgs {
        count,
        seed,
        rate,
        out,
        topic,
        producer_option,
        ..
    } = args;
    let generator = Generator::new(GenConfig {
        seed,
        count,
        ..GenConfig::default()
    });
    let start = Instant::now();
    let pace = |i: u64| {
        if rate > 0 {
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    };
    if let Some(topic) = topic {
        let (p, counter) = kmflow::import::producer(&brokers, &producer_option)?;
        let pb = kmflow::import::progress("generating");
        for (i, (id, payload)) in generator.enumerate() {
            pace(i as u64);
            kmflow::import::send(&p, &topic, id.to_string().as_bytes(), &payload)?;
            pb.inc(1);
        }
        rdkafka::producer::Producer::flush(&p, Duration::from_secs(120))?;
        pb.finish_and_clear();
        let failed = counter.failed.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!(
            "kmflow gen: {count} killmails to {topic} in {:.1}s, {failed} failed",
            start.elapsed().as_secs_f64()
        );
        if failed > 0 {
            anyhow::bail!("{failed} killmails were not delivered");
        }
        return Ok(());
    }
    let sink: Box<dyn std::io::Write> = match &out {
        Some(path) => Box::new(std::fs::File::create(path)?),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut w = std::io::BufWriter::with_capacity(1 << 20, sink);
    for (i, (_, payload)) in generator.enumerate() {
        pace(i as u64);
        w.write_all(&payload)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    if out.is_some() {
        eprintln!(
            "kmflow gen: {count} killmails in {:.1}s",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
