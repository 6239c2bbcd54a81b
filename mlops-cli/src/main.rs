//! `mlops`: the service binary of the mlops SDK.
//!
//! ```text
//! mlops serve --config mlops.toml     serve the configured deployments over HTTP (v2)
//!                                     and, with [grpc], gRPC; TLS with [http] / [grpc]
//!                                     tls; SIGTERM drains and exits, SIGHUP applies
//!                                     deployment changes and keys from the file; joins
//!                                     the fleet on the storage root ([fleet])
//! mlops check --config mlops.toml     check a config file, change nothing
//! mlops models --config mlops.toml list | show | register [--sign] | alias | archive | verify
//!     | lineage NAME [VERSION]        where a version came from and where it went (JSON)
//! mlops models keygen --out DIR --id ID   an ed25519 key pair for [registry]
//!
//! mlops audit --config mlops.toml verify | tail | anchor   (anchor: the head signed
//!                                     with [registry] signing_key; verify checks it)
//! mlops runs --config mlops.toml list | show
//! mlops train --config mlops.toml JOB.toml   train on the feature store, track, register
//! mlops datasets --config mlops.toml snapshot FILE... | list | show ID | verify ID
//! mlops features --config mlops.toml apply DEFS.toml | list | ingest VIEW FILE.parquet
//!     | materialize [--incremental] | historical ENTITIES.parquet --feature VIEW:FEATURE...
//!     -o OUT.parquet | get --feature VIEW:FEATURE... --entity KEY=VALUE...
//! mlops retrain --config mlops.toml [--once] [--model NAME]   the [[retrain]] loops:
//!                                     a tick every interval, or one (a CronJob)
//! mlops score --config mlops.toml --model NAME [--version V] --input F.parquet... | --snapshot ID
//!     --output PATH [--keys id,...]   batch predictions next to the keys, tracked
//! mlops models register NAME FILE.onnx --flavor onnx [--reference SAMPLE.parquet]
//! mlops drift check --current NOW.parquet --reference REF.parquet | --model NAME [--version V]
//!                                     [--fail-on-drift: exit 4 when the data drifted]
//! mlops health [--url URL] [--ready]  probe a running server (a container's
//!                                     HEALTHCHECK: no curl in the image)
//! ```
//!
//! Exit codes: 0 success; 1 a runtime failure (storage, a port in use, an
//! unknown name); 2 a usage or config error (the message names the key); 3 an
//! integrity check failed (a digest, a signature or the audit chain); 4 drift
//! found by `drift check --fail-on-drift`. A
//! deployment whose model does not load is not an exit: `serve` comes up with
//! it not ready and retries.
//! Logs go to stderr, as text or, with `--log-format json`, one JSON object per
//! line; `RUST_LOG` filters them (default `info`).

mod config;
mod datasets;
mod drift;
mod features;
mod io;
mod models;
mod progress;
mod records;
mod retrain;
mod score;
mod serve;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use mlops::core::Error;

/// mimalloc, as the in-process serving benchmark runs: every request allocates
/// (decoded tensors, the answer, hyper's buffers), and its thread-local free
/// lists are faster than the system allocator at that: with it the served
/// binary answers about 10% more requests (docs/performance.md,
/// benches/serve_binary.py).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mlops service: models served from a registry, configured by a file.
#[derive(Debug, Parser)]
#[command(name = "mlops", version, about)]
struct Cli {
    /// How logs are written to stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Print results as JSON (for scripts) instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the configured deployments over HTTP until SIGTERM or SIGINT, then
    /// drain the requests in flight and exit 0.
    Serve {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file (syntax, keys, deployments) without serving.
    Check {
        /// The config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The model registry on the config's storage root.
    Models {
        /// The config file (only its [storage] is read).
        #[arg(long, short, global = true, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// The tamper-evident audit log on the config's storage root.
    Audit {
        /// The config file (only its [storage] is read).
        #[arg(long, short, global = true, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: records::AuditCommand,
    },
    /// Probes a running server's health endpoint: exit 0 when it answers live
    /// (or, with `--ready`, ready to serve), 1 otherwise. For a container's
    /// HEALTHCHECK, so the image needs no HTTP client of its own.
    Health {
        /// The server's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8000")]
        url: String,
        /// Ask whether it is ready to serve (every model loaded), not only live.
        #[arg(long)]
        ready: bool,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Data drift of a Parquet file against a reference file or a registered
    /// model's training reference.
    Drift {
        /// The config file (read only for `--model`).
        #[arg(long, short, global = true, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: drift::DriftCommand,
    },
    /// Trains a model on a training set the feature store builds
    /// point-in-time, tracks the run, snapshots the training set and registers
    /// the model with that lineage.
    Train {
        /// The config file (its [storage] and [registry] are read).
        #[arg(long, short, default_value = "mlops.toml")]
        config: PathBuf,
        /// The training job (model, task, label, entities file, features).
        job: PathBuf,
    },
    /// Runs the config's `[[retrain]]` loops: drift- and quality-triggered
    /// retraining with a canary rollout, their state and lease on the storage
    /// root (any number of these processes act as one loop per model).
    Retrain {
        /// The config file (its [storage], [registry] and [[retrain]] are read).
        #[arg(long, short, default_value = "mlops.toml")]
        config: PathBuf,
        /// One tick of each loop, then exit (for a CronJob); without it, a tick
        /// every `interval` until SIGTERM or SIGINT.
        #[arg(long)]
        once: bool,
        /// Only the loop of this model.
        #[arg(long)]
        model: Option<String>,
        /// This process's name in the loop's lease and the audit log (default:
        /// the host's name and the process id).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Scores Parquet files or a dataset snapshot with a registered model
    /// version, writing the predictions next to the row keys under the storage
    /// root; recorded as a tracker run and in the audit log.
    Score {
        /// The config file (its [storage] and [registry] are read).
        #[arg(long, short, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(flatten)]
        args: score::ScoreArgs,
    },
    /// Content-addressed dataset snapshots on the config's storage root.
    Datasets {
        /// The config file (only its [storage] is read).
        #[arg(long, short, global = true, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: datasets::DatasetsCommand,
    },
    /// The feature store: definitions, history and training sets on the
    /// config's storage root, the latest values in its `[online]` store.
    Features {
        /// The config file (its [storage] and [online] are read).
        #[arg(long, short, global = true, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: features::FeaturesCommand,
    },
    /// Experiment runs on the config's storage root.
    Runs {
        /// The config file (only its [storage] is read).
        #[arg(long, short, global = true, default_value = "mlops.toml")]
        config: PathBuf,
        #[command(subcommand)]
        command: records::RunsCommand,
    },
}

/// An error, and the exit code it means.
fn exit_code(e: &Error) -> u8 {
    match e {
        Error::InvalidInput { .. } | Error::SchemaMismatch { .. } => 2,
        Error::Integrity { .. } => 3,
        _ => 1,
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: logs redirected to a file or
    // collected from a container carry no escape codes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    // Set by `drift check --fail-on-drift` when the data drifted.
    let mut drifted = false;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve { config } => serve::run(&config).await,
            Command::Check { config } => serve::check(&config, cli.json),
            Command::Models { config, command } => models::run(&config, command, cli.json).await,
            Command::Audit { config, command } => records::audit(&config, command, cli.json).await,
            Command::Runs { config, command } => records::runs(&config, command, cli.json).await,
            Command::Drift { config, command } => {
                drift::run(&config, command, cli.json).await.map(|d| {
                    drifted = d.0;
                })
            }
            Command::Train { config, job } => train::run(&config, &job, cli.json).await,
            Command::Score { config, args } => score::run(&config, args, cli.json).await,
            Command::Retrain {
                config,
                once,
                model,
                instance,
            } => {
                retrain::run(
                    &config,
                    model.as_deref(),
                    instance.as_deref(),
                    once,
                    cli.json,
                )
                .await
            }
            Command::Datasets { config, command } => {
                datasets::run(&config, command, cli.json).await
            }
            Command::Features { config, command } => {
                features::run(&config, command, cli.json).await
            }
            Command::Health {
                url,
                ready,
                timeout,
            } => serve::health(&url, ready, timeout, cli.json).await,
        }
    });
    match result {
        Ok(()) if drifted => ExitCode::from(drift::DRIFT_EXIT),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                let line = serde_json::json!({"error": e.to_string(), "exit_code": exit_code(&e)});
                eprintln!("{line}");
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}
