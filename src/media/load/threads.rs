//! Whose threads are whose, for the CPU each pipeline costs. A pipeline's thread is named `mv<id> <source>`;
//! Linux copies a thread's name to the threads it starts, so the decoder, scaler and x264 threads FFmpeg
//! starts from it carry the tag too, and one pipeline's CPU time is the sum over the process's threads
//! with its tag (read from /proc/self/task). The parsing is pure; only [`cpu_ticks_by_pipeline`] reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A number for a new pipeline, unique in the process.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The name of pipeline `id`'s thread: the tag first, as Linux keeps only 15 bytes of a thread's name.
pub fn thread_name(id: u64, shown: &str) -> String {
    format!("mv{id} {shown}").chars().take(40).collect()
}

/// The pipeline a thread name is tagged with, if any.
pub fn tag_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("mv")?;
    let digits = rest.split(' ').next()?;
    // A name cut right after the digits has no space: `mv123456789012`.
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The name and the CPU time (utime + stime, in clock ticks) of a `/proc/PID/task/TID/stat` line. The name
/// may hold spaces and parentheses: it ends at the last `)`.
pub fn parse_task_stat(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?;
    let fields: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    // Fields 14 and 15 of the line; 12 and 13 after the name and the state.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ticks))
}

/// Sums the CPU ticks of tagged threads by pipeline, from `(thread name, ticks)` pairs.
pub fn ticks_by_pipeline<'a>(threads: impl IntoIterator<Item = (&'a str, u64)>) -> HashMap<u64, u64> {
    let mut out = HashMap::new();
    for (name, ticks) in threads {
        if let Some(id) = tag_of(name) {
            *out.entry(id).or_insert(0) += ticks;
        }
    }
    out
}

/// The CPU ticks (1/100 s on Linux) each running pipeline's threads have used so far; empty where there is
/// no /proc. Threads that ended take their ticks with them: callers compare samples with that in mind.
pub fn cpu_ticks_by_pipeline() -> HashMap<u64, u64> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return HashMap::new() };
    let stats: Vec<String> =
        tasks.flatten().filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok()).collect();
    ticks_by_pipeline(stats.iter().filter_map(|s| parse_task_stat(s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_stat_lines() {
        let table: [(&str, Option<u64>); 7] = [
            ("mv7 /tmp/clip.m", Some(7)),
            ("mv123456789012", Some(123_456_789_012)),
            ("mv /tmp", None),
            ("mvx1 a", None),
            ("media bridge", None),
            ("tokio-runtime-w", None),
            ("", None),
        ];
        for (name, want) in table {
            assert_eq!(tag_of(name), want, "{name:?}");
        }
        assert_eq!(thread_name(3, "builtin://testsrc"), "mv3 builtin://testsrc");
        let line = "4321 (mv3 a (b) c) S 1 1 1 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_task_stat(line), Some(("mv3 a (b) c", 300)));
        assert_eq!(parse_task_stat("garbage"), None);
        assert_eq!(parse_task_stat("1 (x) S 1 2"), None);
        let sums = ticks_by_pipeline([("mv3 a", 10), ("mv3 a", 5), ("mv4 b", 1), ("other", 99)]);
        assert_eq!((sums.get(&3), sums.get(&4), sums.len()), (Some(&15), Some(&1), 2));
    }

    #[test]
    fn threads_started_by_a_tagged_thread_carry_its_tag() {
        let id = next_id();
        let name = thread_name(id, "test");
        let (before, during) = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let before = cpu_ticks_by_pipeline().get(&id).copied();
                // A thread this one starts, as FFmpeg's are, busy for a while.
                let child = std::thread::spawn(|| {
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
                    let mut x = 0u64;
                    while std::time::Instant::now() < until {
                        x = x.wrapping_add(1);
                    }
                    std::hint::black_box(x);
                    cpu_ticks_by_pipeline()
                });
                (before, child.join().expect("the child thread"))
            })
            .expect("a thread")
            .join()
            .expect("the tagged thread");
        assert!(before.is_some(), "the tagged thread itself is found");
        assert!(during.get(&id).is_some_and(|&t| t >= 5), "the child's CPU counts for the pipeline: {during:?}");
    }
}
