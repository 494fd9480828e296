//! CPU time and memory of a process, from Linux's `/proc`.

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every Linux architecture
/// this runs on (sysconf(_SC_CLK_TCK) would need unsafe code, which the workspace forbids).
const USER_HZ: f64 = 100.0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`; `None` if the process is gone.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) overall; `rest` starts at field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Some(ProcSample { cpu_seconds: (utime + stime) / USER_HZ, rss_kib: kib("VmRSS:"), peak_rss_kib: kib("VmHWM:") })
}

/// This process.
pub fn sample_self() -> Option<ProcSample> {
    sample(std::process::id())
}

/// CPU seconds used so far by every live process whose command name is `comm` (e.g. all of
/// PostgreSQL's `postgres` processes: the server and one backend per connection). The difference
/// of two readings is their CPU in between, provided no process of that name ended meanwhile
/// (a pooled database connection lives as long as the pool).
pub fn cpu_seconds_of_named(comm: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == comm))
        .filter_map(sample)
        .map(|s| s.cpu_seconds)
        .sum()
}
