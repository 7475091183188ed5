//! Process facts: the clock the payloads carry, resident memory, CPU time, the open-file limit.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch. Every process on the machine reads the same clock, so a
/// publish time written by one process can be compared with the arrival time in another.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// `pid` and every process descended from it (nginx's workers, Pushpin's services), read from
/// `/proc`.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // After the name in parentheses: state, then the parent's pid.
            let parent = stat[stat.rfind(')')? + 2..]
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            Some((child, parent))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    tree
}

/// Proportional set size of `pid` and its descendants in KiB (`Pss` of
/// `/proc/<pid>/smaps_rollup`, summed): memory shared between a server's processes (nginx's
/// workers map one shared zone) is counted once, not once per process.
pub fn pss_kib_tree(pid: u32) -> Option<u64> {
    let mut total = 0;
    for process in process_tree(pid) {
        let rollup = std::fs::read_to_string(format!("/proc/{process}/smaps_rollup")).ok()?;
        total += rollup
            .lines()
            .find_map(|l| l.strip_prefix("Pss:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())?;
    }
    Some(total)
}

/// CPU seconds `pid` and its descendants have used (see [`cpu_secs`]).
pub fn cpu_secs_tree(pid: u32) -> Option<f64> {
    process_tree(pid).into_iter().map(cpu_secs).sum()
}

/// CPU seconds process `pid` has used, user and system together (`/proc/<pid>/stat`, in clock
/// ticks of 1/100 s, which Linux fixes for this interface).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the full line; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Context switches of `pid` and its descendants, every thread's, voluntary and not
/// (`/proc/<pid>/task/<tid>/status`): a thread that goes to sleep and is woken counts one.
pub fn context_switches_tree(pid: u32) -> Option<u64> {
    let mut total = 0;
    for process in process_tree(pid) {
        for task in std::fs::read_dir(format!("/proc/{process}/task")).ok()? {
            let status = std::fs::read_to_string(task.ok()?.path().join("status")).ok()?;
            total += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Some(total)
}

/// Raises this process's open-file limit to the hard limit; returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
