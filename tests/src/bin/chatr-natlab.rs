//! `chatr-natlab`: runs the NAT matrix with the real binaries and rewrites `docs/NAT-MATRIX.md`.
//!
//! ```text
//! cargo build -p chatr-server -p chatr-cli
//! sudo cargo run -p chatr-tests --bin chatr-natlab -- [--delay-ms 20] [--loss 0] [--out docs/NAT-MATRIX.md]
//! ```
//! Exits 1 when a pair that must be direct was not (after writing the table).
//!
//! Statistics mode: `--repeat 50 --pair symmetric,port-restricted [--background 20]` runs
//! one pair many times (fresh NAT sites each try), prints the success rate, the
//! time-to-direct distribution and the probes per try, and puts that row into the
//! statistics section of `docs/NAT-MATRIX.md` (which matrix runs keep).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use chatr_tests::lab::matrix::{self, Binaries, MatrixConfig, Pair};
use chatr_tests::lab::stats::{self, PairStats};
use chatr_tests::lab::{Lab, LinkCondition, NatProfile};
use clap::Parser;

/// Runs every pair of NAT profiles through the lab with the real `chatr` and
/// `chatr-server` binaries and writes the result table.
#[derive(Debug, Parser)]
#[command(name = "chatr-natlab", version)]
struct Args {
    /// One-way delay between the two peers' routers, in ms (each uplink gets half).
    #[arg(long, default_value_t = 20)]
    delay_ms: u64,
    /// Loss per uplink and direction, in percent.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    loss: u8,
    /// Where to write the Markdown table [default: docs/NAT-MATRIX.md of the workspace].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the table instead of writing a file.
    #[arg(long)]
    stdout: bool,
    /// Directory holding `chatr` and `chatr-server` [default: $CHATR_BIN_DIR, else target/debug].
    #[arg(long, env = "CHATR_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Only these pairs (comma-separated `PROFILE:PROFILE` or `same-lan`; `PROFILE+v6` is the
    /// dual-stack variant, e.g. `symmetric+v6:symmetric+v6`).
    #[arg(long, value_delimiter = ',')]
    pairs: Vec<String>,
    /// Pairs run at the same time.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Bytes piped in each direction.
    #[arg(long, default_value_t = 256 * 1024)]
    bytes: usize,
    /// Time limit for one pair's `pipe` exchange, in seconds.
    #[arg(long, default_value_t = 60)]
    pipe_timeout: u64,
    /// Keep homes, data and logs in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Statistics mode: run `--pair` this many times.
    #[arg(long, requires = "pair")]
    repeat: Option<usize>,
    /// The pair for `--repeat`, as `PROFILE,PROFILE`.
    #[arg(long)]
    pair: Option<String>,
    /// New UDP flows per second another host on each NAT site opens meanwhile.
    #[arg(long, default_value_t = 0)]
    background: u32,
    /// How long a pair that must be direct may take to get there, in seconds.
    #[arg(long, default_value_t = 15)]
    wait_direct: u64,
    /// Only remove namespaces left behind by killed lab runs, then exit.
    #[arg(long)]
    sweep: bool,
    /// (For the lab's own tests) build a small lab, print `HOLDING <prefix>`, and wait to be killed.
    #[arg(long, hide = true)]
    hold: bool,
}

fn hold() -> anyhow::Result<()> {
    let mut lab = Lab::new()?;
    lab.add_public_host("srv")?;
    let mut site = lab.add_site(
        "held",
        NatProfile::Cgnat,
        LinkCondition::delay_ms(5).with_loss(1),
    )?;
    let host = lab.add_host(&mut site, "h")?;
    // A process inside, as a real run would have.
    let _child = host.netns().command("sleep").arg("3600").spawn()?;
    println!("HOLDING {}", lab.prefix());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.hold {
        return hold();
    }
    if args.sweep {
        chatr_tests::lab::ensure_prerequisites()?;
        let removed = chatr_tests::lab::sweep_leftovers();
        eprintln!("natlab: removed {} leftover namespace(s)", removed.len());
        return Ok(());
    }
    let binaries = Binaries::locate(args.bin_dir.as_deref())?;
    if args.bin_dir.is_none() {
        // Found in target/: make sure they are not older than their sources.
        binaries.check_fresh()?;
    }
    let mut config = MatrixConfig::new(binaries);
    config.delay_ms = args.delay_ms;
    config.loss_percent = args.loss;
    config.concurrency = args.concurrency;
    config.bytes = args.bytes;
    config.pipe_timeout = Duration::from_secs(args.pipe_timeout);
    config.keep_dir = args.keep.clone();
    config.background_flows = args.background;
    config.wait_direct = Duration::from_secs(args.wait_direct);
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/NAT-MATRIX.md"));
    if let (Some(n), Some(pair)) = (args.repeat, args.pair.as_deref()) {
        return repeat(config, n, pair, &args, &out);
    }
    if !args.pairs.is_empty() {
        config.pairs = args
            .pairs
            .iter()
            .map(|p| Pair::parse(p))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?;
    }
    eprintln!(
        "natlab: {} pairs, {} ms between routers, {} % loss per uplink",
        config.pairs.len(),
        config.delay_ms,
        config.loss_percent
    );
    let run = matrix::run(&config)?;
    let mut command = format!(
        "chatr-natlab --delay-ms {} --loss {}",
        args.delay_ms, args.loss
    );
    if !args.pairs.is_empty() {
        command.push_str(&format!(" --pairs {}", args.pairs.join(",")));
    }
    let mut markdown = run.to_markdown(&command);
    if args.stdout {
        print!("{markdown}");
    } else {
        // The statistics section comes from `--repeat` runs: keep it.
        if let Ok(old) = std::fs::read_to_string(&out)
            && let Some(block) = stats::block_of(&old)
        {
            markdown = format!(
                "{}

{block}
",
                markdown.trim_end()
            );
        }
        std::fs::write(&out, &markdown).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("natlab: wrote {}", out.display());
    }
    for r in &run.results {
        eprintln!(
            "natlab: {:<40} {}{}",
            r.pair.label(),
            if r.direct { "direct" } else { "failed" },
            if r.why.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.why)
            }
        );
    }
    let missed = run.unexpected();
    if !missed.is_empty() {
        bail!(
            "{} pair(s) that must be direct were not: {}",
            missed.len(),
            missed
                .iter()
                .map(|r| r.pair.label())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// The statistics mode: `n` tries of one pair.
fn repeat(
    mut config: MatrixConfig,
    n: usize,
    pair: &str,
    args: &Args,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let pair = Pair::parse(&pair.replacen(',', ":", 1)).map_err(anyhow::Error::msg)?;
    config.pairs = vec![pair; n.max(1)];
    eprintln!(
        "natlab: {} × {}, {} ms between routers, {} background flows/s per site",
        config.pairs.len(),
        pair.label(),
        config.delay_ms,
        config.background_flows
    );
    let run = matrix::run(&config)?;
    let summary = PairStats::of(pair, &run);
    for (k, r) in run.results.iter().enumerate() {
        eprintln!(
            "natlab: try {k:>3}: {}{}",
            if r.direct {
                "direct"
            } else if r.linked {
                "relayed"
            } else {
                "failed"
            },
            if r.why.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.why)
            }
        );
    }
    let row = summary.row(config.background_flows);
    print!("{}{row}", stats::header());
    if !args.stdout {
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let key = format!("| {} | {} |", pair.label(), config.background_flows);
        std::fs::write(out, stats::merge_into(&old, &row, &key))
            .with_context(|| format!("writing {}", out.display()))?;
        eprintln!("natlab: wrote the statistics row into {}", out.display());
    }
    Ok(())
}
