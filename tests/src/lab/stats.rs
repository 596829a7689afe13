//! The statistics mode of the NAT lab: one pair, many tries, and what they add up to.
//!
//! `chatr-natlab --repeat 50 --pair symmetric,port-restricted` runs the pair 50 times,
//! each on fresh NAT sites, and reports how many tries came out direct, how long the
//! initiator took from its request to the direct path (min / median / p95 / max), and
//! how many punch probes both sides sent per try (prediction and birthday probes
//! included). The table goes into `docs/NAT-MATRIX.md` between markers that a matrix
//! run keeps.

use super::matrix::{MatrixRun, Pair, PairResult};

/// Where the statistics sit in `docs/NAT-MATRIX.md`.
pub const BEGIN: &str = "<!-- natlab-stats:begin -->";
/// End marker.
pub const END: &str = "<!-- natlab-stats:end -->";

/// What one pair's tries add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct PairStats {
    /// The pair.
    pub pair: Pair,
    /// Tries run.
    pub tries: usize,
    /// Tries that linked and ended on a direct path.
    pub direct: usize,
    /// Tries that linked at all (direct or relayed).
    pub linked: usize,
    /// Request to direct path, in ms, of each direct try (sorted).
    pub time_to_direct_ms: Vec<u64>,
    /// Punch probes of both sides, per try that reported them (sorted).
    pub probes: Vec<u32>,
}

impl PairStats {
    /// Sums up the tries of `run` (all of one pair).
    pub fn of(pair: Pair, run: &MatrixRun) -> PairStats {
        let results: Vec<&PairResult> = run.results.iter().filter(|r| r.pair == pair).collect();
        let mut time_to_direct_ms: Vec<u64> = results
            .iter()
            .filter(|r| r.direct)
            .filter_map(|r| time_to_direct(r))
            .collect();
        time_to_direct_ms.sort_unstable();
        let mut probes: Vec<u32> = results.iter().filter_map(|r| probes(r)).collect();
        probes.sort_unstable();
        PairStats {
            pair,
            tries: results.len(),
            direct: results.iter().filter(|r| r.direct).count(),
            linked: results.iter().filter(|r| r.linked).count(),
            time_to_direct_ms,
            probes,
        }
    }

    /// Direct tries in percent.
    pub fn direct_percent(&self) -> f64 {
        if self.tries == 0 {
            return 0.0;
        }
        100.0 * self.direct as f64 / self.tries as f64
    }

    /// One Markdown table row (see [`header`]).
    pub fn row(&self, background: u32) -> String {
        let t = &self.time_to_direct_ms;
        let p = &self.probes;
        let ms = |v: Option<u64>| {
            v.map_or_else(|| "–".to_owned(), |v| format!("{:.2}", v as f64 / 1000.0))
        };
        let n = |v: Option<u32>| v.map_or_else(|| "–".to_owned(), |v| v.to_string());
        format!(
            "| {} | {} | {} | {} ({:.0} %) | {} | {} | {} | {} | {} / {} / {} |\n",
            self.pair.label(),
            background,
            self.tries,
            self.direct,
            self.direct_percent(),
            ms(t.first().copied()),
            ms(percentile(t, 50)),
            ms(percentile(t, 95)),
            ms(t.last().copied()),
            n(p.first().copied()),
            n(percentile(p, 50)),
            n(p.last().copied()),
        )
    }
}

/// The table head for [`PairStats::row`].
pub fn header() -> &'static str {
    "| Pair | Background flows/s | Tries | Direct | Time to direct min (s) | median | p95 | max | Probes per try min / median / max |\n\
     |---|---|---|---|---|---|---|---|---|\n"
}

/// The initiator's time from its request to the direct path: when it saw the switch,
/// else (direct by the end of the transfer) its ClientInfo-to-link time.
fn time_to_direct(r: &PairResult) -> Option<u64> {
    let report = r.initiator.report.as_ref()?;
    match report.transfer.as_ref().and_then(|t| t.direct_ms) {
        Some(ms) if ms > 0 => Some(ms),
        _ => report.punch_ms,
    }
}

/// Both sides' punch probes by the end of the try.
fn probes(r: &PairResult) -> Option<u32> {
    let side = |o: &super::matrix::PeerOutcome| {
        let report = o.report.as_ref()?;
        report
            .transfer
            .as_ref()
            .and_then(|t| t.probes_sent)
            .or(report.probes_sent)
    };
    Some(side(&r.listener)? + side(&r.initiator)?)
}

/// The `pct`th percentile of sorted `values` (nearest rank).
pub fn percentile<T: Copy>(values: &[T], pct: usize) -> Option<T> {
    if values.is_empty() {
        return None;
    }
    let rank = (pct * values.len()).div_ceil(100).max(1);
    values.get(rank - 1).copied()
}

/// `doc` with the statistics block replaced by (or, when it has none, followed by)
/// `block`'s rows for `rows` (one per pair and background rate, newest kept).
pub fn merge_into(doc: &str, row: &str, pair_key: &str) -> String {
    let (before, existing, after) = match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if b < e => (&doc[..b], &doc[b + BEGIN.len()..e], &doc[e + END.len()..]),
        _ => (doc, "", ""),
    };
    let mut rows: Vec<String> = existing
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Pair") && !l.starts_with("|---"))
        .filter(|l| !l.starts_with(pair_key))
        .map(str::to_owned)
        .collect();
    rows.push(row.trim_end().to_owned());
    rows.sort();
    let mut out = before.trim_end().to_owned();
    out.push_str("\n\n");
    out.push_str(BEGIN);
    out.push_str(
        "\n## Hard pairs, many tries\n\n\
         `chatr-natlab --repeat N --pair A,B`: each try on fresh NAT sites, 20 ms between the \
         routers. Time to direct is the initiator's, from its request to the link being on \
         the direct path (it comes up on the relay first). Probes are both sides' punch \
         probes per try, prediction and birthday probes included.\n\n",
    );
    out.push_str(header());
    for r in rows {
        out.push_str(&r);
        out.push('\n');
    }
    out.push_str(END);
    out.push('\n');
    out.push_str(after.trim_start());
    out
}

/// The statistics block of `doc`, markers included (to carry over a matrix rewrite).
pub fn block_of(doc: &str) -> Option<&str> {
    let b = doc.find(BEGIN)?;
    let e = doc.find(END)?;
    (b < e).then(|| &doc[b..e + END.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=20).collect();
        assert_eq!(percentile(&v, 50), Some(10));
        assert_eq!(percentile(&v, 95), Some(19));
        assert_eq!(percentile(&v, 100), Some(20));
        assert_eq!(percentile(&[7u64], 95), Some(7));
        assert_eq!(percentile::<u64>(&[], 50), None);
    }

    #[test]
    fn merging_replaces_the_pairs_row_and_keeps_the_rest() {
        let doc = "# Matrix\n\ntable\n";
        let a = "| symmetric ↔ cgnat | 0 | 50 | 49 (98 %) | 1 | 2 | 3 | 4 | 1 / 2 / 3 |\n";
        let once = merge_into(doc, a, "| symmetric ↔ cgnat | 0 |");
        assert!(once.starts_with("# Matrix\n\ntable\n\n<!-- natlab-stats:begin -->"));
        assert!(once.contains(a.trim_end()));
        let b =
            "| port-restricted ↔ symmetric | 0 | 50 | 50 (100 %) | 1 | 2 | 3 | 4 | 1 / 2 / 3 |\n";
        let twice = merge_into(&once, b, "| port-restricted ↔ symmetric | 0 |");
        assert!(twice.contains(a.trim_end()) && twice.contains(b.trim_end()));
        let a2 = "| symmetric ↔ cgnat | 0 | 10 | 10 (100 %) | 1 | 2 | 3 | 4 | 1 / 2 / 3 |\n";
        let thrice = merge_into(&twice, a2, "| symmetric ↔ cgnat | 0 |");
        assert!(!thrice.contains(a.trim_end()) && thrice.contains(a2.trim_end()));
        assert_eq!(thrice.matches(BEGIN).count(), 1);
        assert!(block_of(&thrice).unwrap().ends_with(END));
    }
}
