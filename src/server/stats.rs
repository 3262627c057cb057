//! Process figures for the stats message, read from /proc (Linux).

use std::time::Instant;

/// Clock ticks per second of /proc/self/stat times (USER_HZ, 100 on every Linux we run on).
pub const TICKS_PER_SEC: f64 = 100.0;

/// CPU use of a process since the previous sample.
#[derive(Debug)]
pub struct CpuMeter {
    stat: String,
    last: Option<(Instant, u64)>,
}

impl Default for CpuMeter {
    /// This process.
    fn default() -> Self {
        Self::at("/proc/self/stat".into())
    }
}

impl CpuMeter {
    /// Another process (a local server, the ffmpeg CLI), from now on.
    pub fn of(pid: u32) -> Self {
        Self::at(format!("/proc/{pid}/stat"))
    }

    fn at(stat: String) -> Self {
        let last = cpu_ticks_at(&stat).map(|t| (Instant::now(), t));
        Self { stat, last }
    }

    /// Percent of one core used since the last call (or since creation).
    pub fn sample(&mut self) -> Option<f64> {
        let now = (Instant::now(), cpu_ticks_at(&self.stat)?);
        let percent = self.last.map(|(t0, ticks0)| {
            let secs = now.0.duration_since(t0).as_secs_f64().max(1e-3);
            (now.1.saturating_sub(ticks0)) as f64 / TICKS_PER_SEC / secs * 100.0
        });
        self.last = Some(now);
        percent
    }
}

/// utime + stime of this process, in ticks.
pub fn cpu_ticks() -> Option<u64> {
    cpu_ticks_at("/proc/self/stat")
}

fn cpu_ticks_at(stat: &str) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(stat).ok()?)
}

/// utime + stime from a /proc/PID/stat line; the command name may hold spaces and parentheses.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the line; 12 and 13 after the name and state.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident memory in KiB and thread count of this process.
pub fn memory_and_threads() -> (Option<u64>, Option<u64>) {
    memory_and_threads_at("/proc/self/status")
}

/// Resident memory in KiB and thread count of another process.
pub fn memory_and_threads_of(pid: u32) -> (Option<u64>, Option<u64>) {
    memory_and_threads_at(&format!("/proc/{pid}/status"))
}

fn memory_and_threads_at(path: &str) -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string(path) else { return (None, None) };
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Bytes a process has passed to `write`-like calls (sockets included), from /proc/PID/io; `None` for
/// this process when `pid` is `None`.
pub fn bytes_written(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/io".to_string(), |p| format!("/proc/{p}/io"));
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix("wchar:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines_with_odd_names() {
        let line = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(line), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_ticks().is_some());
        let (rss, threads) = memory_and_threads();
        assert!(rss.unwrap() > 0 && threads.unwrap() >= 1);
    }
}
