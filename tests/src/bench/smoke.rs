//! `smoke`: a few seconds of figures 1–3 with tiny numbers, for CI.
//!
//! It checks that the tool works and that the server behaves (every login
//! succeeds, no session is lost, every brokered exchange completes, a forged
//! login is refused); it never asserts anything about speed.

use std::time::Duration;

use chatr_proto::{Packet, PacketConnect, VERSION_CURRENT};

use crate::bench::BenchError;
use crate::bench::broker::{self, BrokerArgs};
use crate::bench::client::Conn;
use crate::bench::concurrent::{self, ConcurrentArgs};
use crate::bench::identity::{self, Identity};
use crate::bench::login_rate::{self, LoginRateArgs};
use crate::bench::serve::ServerKind;
use crate::bench::server::{ServerProcess, Workspace};

/// Outcome of the smoke run.
#[derive(Debug, Default)]
pub struct SmokeReport {
    /// Human-readable lines, one per check.
    pub lines: Vec<String>,
    /// Checks that failed.
    pub failures: Vec<String>,
}

impl SmokeReport {
    fn check(&mut self, ok: bool, what: String) {
        if ok {
            self.lines.push(format!("ok   {what}"));
        } else {
            self.lines.push(format!("FAIL {what}"));
            self.failures.push(what);
        }
    }
}

/// Logs in once as a registered identity and once with a key the server does not
/// know; the first must succeed and the second be refused.
async fn login_checks(report: &mut SmokeReport) -> Result<(), BenchError> {
    let ws = Workspace::new()?;
    let ids = Identity::derive_many(0x5, 1);
    let file = ws.path().join("identities.bin");
    identity::write_public(&file, &ids)?;
    let server = ServerProcess::start(&ws.spec(ServerKind::Chatr, Some(file))).await?;
    let connector = ws.cert.connector()?;
    let Some(good) = ids.first() else {
        return Err(BenchError::Check("no identity".into()));
    };
    let mut conn = Conn::connect(None, server.addr(), &connector).await?;
    let ok = tokio::time::timeout(Duration::from_secs(10), conn.login(good)).await;
    report.check(
        matches!(ok, Ok(Ok(()))),
        format!("registered identity logs in ({ok:?})"),
    );
    conn.goodbye().await;

    // Right UUID, wrong key: must be "Failed to verify!".
    let forged = Identity {
        uuid: good.uuid,
        key: Identity::derive(0x6, 0).key,
    };
    let mut conn = Conn::connect(None, server.addr(), &connector).await?;
    let signature = forged.sign_v2(&conn.exporter()?);
    conn.send(&Packet::Connect(PacketConnect {
        version: VERSION_CURRENT,
        uuid: forged.uuid,
        signature,
    }))
    .await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.recv()).await;
    let refused = matches!(
        &answer,
        Ok(Ok(Some(Packet::Disconnect(d)))) if d.reason() == Some(chatr_proto::DisconnectReason::FailedToVerify)
    );
    report.check(
        refused,
        format!("forged login refused with \"Failed to verify!\" ({answer:?})"),
    );
    server.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Runs the smoke checks.
pub async fn run() -> Result<SmokeReport, BenchError> {
    let mut report = SmokeReport::default();
    login_checks(&mut report).await?;

    let login = login_rate::run(&LoginRateArgs {
        runs: 1,
        duration_secs: 1.0,
        warmup_secs: 0.2,
        concurrency: 4,
        pool: 200,
        source_ips: 2,
        server_log: "warn".into(),
    })
    .await?;
    for k in [&login.chatr, &login.bare] {
        report.check(
            k.failures == 0 && k.rate > 0.0,
            format!(
                "login-rate on {}: {:.0} logins/s, {} failed{}",
                k.kind.label(),
                k.rate,
                k.failures,
                k.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            ),
        );
    }

    let held = concurrent::run(&ConcurrentArgs {
        clients: 200,
        runs: 1,
        ramp_concurrency: 32,
        source_ips: 4,
        settle_secs: 0.5,
        steady_secs: 1.5,
        probes: 2,
        probe_rate: 5.0,
        ping_interval_ms: Some(200),
        // Pings every 200 ms prove the ping path; a generous timeout keeps a
        // loaded CI machine from turning slowness into a "lost" session.
        ping_timeout_ms: Some(10_000),
        no_baseline: false,
        server_log: "warn".into(),
    })
    .await?;
    for r in &held.runs {
        let pinged = r.kind == ServerKind::Bare || r.ping_lateness.is_some_and(|l| l.count > 0);
        report.check(
            r.held == 200 && r.login_failures == 0 && r.lost == 0 && pinged && r.probe_rtt.is_some(),
            format!(
                "concurrent on {}: {} held, {} failed, {} lost, pings answered: {pinged}, probes: {}{}",
                r.kind.label(),
                r.held,
                r.login_failures,
                r.lost,
                r.probe_rtt.map_or(0, |l| l.count),
                r.first_error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (first: {e})"))
            ),
        );
    }

    let brokered = broker::run(&BrokerArgs {
        rates: vec![100],
        runs: 1,
        duration_secs: 1.0,
        pairs: Some(50),
        source_ips: 2,
        no_baseline: false,
        server_log: "warn".into(),
    })
    .await?;
    for r in &brokered.runs {
        // Overlaps (a pair's previous exchange still running when the next is due)
        // measure how fast the machine is, so they do not fail the smoke run;
        // denials, timeouts and broken sessions do.
        let failed = r.errors.saturating_sub(r.overlaps);
        report.check(
            failed == 0 && r.completed + r.overlaps == r.issued && r.completed > 0,
            format!(
                "broker on {}: {}/{} exchanges completed, {failed} failed, {} skipped (overlap)",
                r.kind.label(),
                r.completed,
                r.issued,
                r.overlaps
            ),
        );
    }
    Ok(report)
}
