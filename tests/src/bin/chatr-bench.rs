//! `chatr-bench`: reproduces every figure of `BENCHMARKS.md`, each beside its baseline
//! measured in the same run (see `tests/src/bench/` for what is measured and how).
//!
//! ```text
//! cargo build --release -p chatr-tests --bin chatr-bench
//! target/release/chatr-bench login-rate
//! target/release/chatr-bench concurrent --clients 100000
//! target/release/chatr-bench broker --rate 1000 --rate 5000 --rate 20000
//! target/release/chatr-bench hostile --scenario memory      # RSS after 2 × 10 000 sessions
//! target/release/chatr-bench hostile --scenario storm --scenario api-flood
//! target/release/chatr-bench punch-time --delay-ms 20      # root: NAT lab
//! target/release/chatr-bench throughput                    # root: NAT lab + iperf3 + iroh-probe
//! cargo run -p chatr-tests --bin chatr-bench -- smoke      # CI: does the tool work?
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use chatr_tests::bench::{
    broker, concurrent, hostile, lab, login_rate, report, serve, smoke, throughput,
};
use clap::{Parser, Subcommand};

// The allocator under test: jemalloc as chatr-server by default; `--no-default-features`
// for glibc's, plus `--features mimalloc` for mimalloc.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chatr benchmarks: every figure beside its baseline, medians over several runs.
#[derive(Debug, Parser)]
#[command(name = "chatr-bench", version)]
struct Cli {
    /// Also write the full report as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Logins per second vs a bare tokio-rustls accept loop (target ≥ 90 %).
    LoginRate(login_rate::LoginRateArgs),
    /// Hold N authenticated clients answering pings: RSS/client, CPU, round trip, losses.
    Concurrent(concurrent::ConcurrentArgs),
    /// Request → Accept → ClientInfo latency at fixed rates vs a bare echo.
    Broker(broker::BrokerArgs),
    /// Issue 16's attacks at full size: RSS after load, reconnect storm, body-less PUT flood.
    Hostile(hostile::HostileArgs),
    /// NAT lab (root): ClientInfo → authenticated QUIC link, in RTTs (target ≤ 2 RTT + 50 ms).
    PunchTime(lab::PunchArgs),
    /// NAT lab (root): `chatr pipe` over kernel-only paths vs iperf3 TCP and iroh, same run.
    Throughput(throughput::ThroughputArgs),
    /// A few seconds of login-rate, concurrent and broker with tiny numbers (CI).
    Smoke,
    /// Internal: the server under test (run by the other subcommands).
    #[command(hide = true)]
    Serve(serve::ServeArgs),
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}

fn print_and_save<T: serde::Serialize>(
    json: Option<&PathBuf>,
    markdown: String,
    value: &T,
) -> anyhow::Result<()> {
    println!("{markdown}");
    if let Some(path) = json {
        report::write_json(path, value)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("chatr-bench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            serve::serve_main(args)?;
        }
        Command::LoginRate(args) => {
            let _ = chatr_tests::bench::sys::raise_nofile(1 << 20);
            let r = runtime()?.block_on(login_rate::run(&args))?;
            print_and_save(
                cli.json.as_ref(),
                format!("{}\n\n{}", r.machine.describe(), r.render()),
                &r,
            )?;
        }
        Command::Concurrent(args) => {
            let want = (args.clients + args.probes + 256) as u64;
            let limit = chatr_tests::bench::sys::raise_nofile(want)?;
            if limit < want {
                anyhow::bail!(
                    "{} clients need {want} file descriptors per process, but RLIMIT_NOFILE is {limit} \
                     and cannot be raised here (raising the hard limit needs CAP_SYS_RESOURCE); \
                     try --clients {}",
                    args.clients,
                    limit.saturating_sub(args.probes as u64 + 256)
                );
            }
            let r = runtime()?.block_on(concurrent::run(&args))?;
            print_and_save(
                cli.json.as_ref(),
                format!("{}\n\n{}", r.machine.describe(), r.render()),
                &r,
            )?;
        }
        Command::Broker(args) => {
            let r = runtime()?.block_on(broker::run(&args))?;
            print_and_save(
                cli.json.as_ref(),
                format!("{}\n\n{}", r.machine.describe(), r.render()),
                &r,
            )?;
        }
        Command::Hostile(args) => {
            let want = (args.clients.max(args.storm_clients) + 4096) as u64;
            let limit = chatr_tests::bench::sys::raise_nofile(want)?;
            if limit < want {
                eprintln!(
                    "chatr-bench hostile: RLIMIT_NOFILE is {limit}, {want} wanted; lower --clients / --storm-clients if logins fail"
                );
            }
            let r = runtime()?.block_on(hostile::run(&args))?;
            print_and_save(
                cli.json.as_ref(),
                format!("{}\n\n{}", r.machine.describe(), r.render()),
                &r,
            )?;
        }
        Command::PunchTime(args) => {
            let r = lab::punch_time(&args)?;
            print_and_save(
                cli.json.as_ref(),
                format!("{}\n\n{}", r.machine.describe(), r.render()),
                &r,
            )?;
        }
        Command::Throughput(args) => {
            let r = throughput::run(&args)?;
            print_and_save(
                cli.json.as_ref(),
                format!("{}\n\n{}", r.machine.describe(), r.render()),
                &r,
            )?;
        }
        Command::Smoke => {
            let _ = chatr_tests::bench::sys::raise_nofile(1 << 16);
            let r = runtime()?.block_on(smoke::run())?;
            for line in &r.lines {
                println!("{line}");
            }
            if !r.failures.is_empty() {
                eprintln!("chatr-bench smoke: {} check(s) failed", r.failures.len());
                return Ok(ExitCode::FAILURE);
            }
            println!("chatr-bench smoke: all checks passed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
