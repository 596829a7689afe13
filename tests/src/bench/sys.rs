//! What the benchmarks read from the operating system: the server's RSS and CPU
//! time from `/proc/<pid>`, the machine description for `BENCHMARKS.md`, and the
//! `nofile` limit (100 000 clients need 100 000 descriptors on each side).

use std::time::Instant;

use crate::bench::BenchError;

/// One reading of a process's memory and CPU counters.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// When it was read.
    pub at: Instant,
    /// Resident set size (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// User + system CPU time of all threads, clock ticks.
    pub cpu_ticks: u64,
}

impl ProcSample {
    /// Reads `/proc/<pid>/status` and `/proc/<pid>/stat`.
    pub fn read(pid: u32) -> Result<Self, BenchError> {
        let at = Instant::now();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| BenchError::io(format!("read /proc/{pid}/status"), e))?;
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| BenchError::Server(format!("no VmRSS in /proc/{pid}/status")))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| BenchError::io(format!("read /proc/{pid}/stat"), e))?;
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or_else(|| BenchError::Server(format!("malformed /proc/{pid}/stat")))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| -> Result<u64, BenchError> {
            fields
                .get(i)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| BenchError::Server(format!("malformed /proc/{pid}/stat")))
        };
        let cpu_ticks = field(11)? + field(12)?;
        Ok(Self {
            at,
            rss_kib,
            cpu_ticks,
        })
    }

    /// CPU seconds used between `earlier` and `self`.
    pub fn cpu_secs_since(&self, earlier: &ProcSample) -> f64 {
        self.cpu_ticks.saturating_sub(earlier.cpu_ticks) as f64 / clock_ticks_per_sec()
    }

    /// CPU use between `earlier` and `self` in percent of one core.
    pub fn cpu_percent_since(&self, earlier: &ProcSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        100.0 * self.cpu_secs_since(earlier) / wall
    }
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/<pid>/stat` CPU times.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system) this process has used so far, all threads.
pub fn self_cpu_secs() -> f64 {
    ProcSample::read(std::process::id())
        .map(|s| s.cpu_ticks as f64 / clock_ticks_per_sec())
        .unwrap_or(0.0)
}

/// Raises `RLIMIT_NOFILE` to at least `want` (the hard limit too, if we may: root);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64, BenchError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(BenchError::io(
            "getrlimit(NOFILE)",
            std::io::Error::last_os_error(),
        ));
    }
    if lim.rlim_cur >= want {
        return Ok(lim.rlim_cur);
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(lim.rlim_max);
    let hard = lim.rlim_max.max(want.min(nr_open));
    let raised = libc::rlimit {
        rlim_cur: want.min(hard),
        rlim_max: hard,
    };
    // SAFETY: `raised` is a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(raised.rlim_cur);
    }
    // Not allowed to raise the hard limit: take what the hard limit allows.
    let soft_only = libc::rlimit {
        rlim_cur: want.min(lim.rlim_max),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft_only) } == 0 {
        Ok(soft_only.rlim_cur)
    } else {
        Err(BenchError::io(
            "setrlimit(NOFILE)",
            std::io::Error::last_os_error(),
        ))
    }
}

/// The machine the figures were taken on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cores: usize,
    /// CPU model name.
    pub cpu: String,
    /// Total memory, GiB.
    pub mem_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average when the run started (other work on the box).
    pub load_1m: f64,
    /// UTC date and time of the run.
    pub date: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn detect() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let load_1m = read("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            mem_gib: mem_kib / (1024.0 * 1024.0),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load_1m,
            date,
        }
    }

    /// One line for reports.
    pub fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB RAM, Linux {}, load {:.2} at start, {}",
            self.cores, self.cpu, self.mem_gib, self.kernel, self.load_1m, self.date
        )
    }
}

/// glibc's `malloc_trim(0)`: gives every free page of every arena back to the
/// kernel. A no-op under another global allocator (it only sees glibc's heap).
pub fn malloc_trim() {
    // SAFETY: malloc_trim takes a size and only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Which global allocator this binary was built with.
pub fn allocator_name() -> &'static str {
    if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else {
        "glibc"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = ProcSample::read(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(clock_ticks_per_sec() > 0.0);
    }
}
