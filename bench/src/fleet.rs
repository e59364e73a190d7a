//! What the fleet benchmarks (`bench-fleet`, `bench-scale`) share: the machine they ran on, the
//! CPU time of this process and its children (vsftpd and its sessions), the machine's busy
//! jiffies, and the clean-up of a run's Redis keys.

use anyhow::Result;
use chrono::Utc;

/// Prints the CPU, the cores, the load average and the date: the first lines of every run.
pub fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "machine: {cpu}, {cores} cores; load average at start: {}",
        load.trim()
    );
    println!("date: {}", Utc::now().format("%Y-%m-%d %H:%M UTC"));
}

/// Deletes every Redis key under `prefix` (the run's own).
pub async fn delete_keys(prefix: &str) -> Result<()> {
    let client = redis::Client::open(harness::redis_url())?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut con)
        .await?;
    for chunk in keys.chunks(500) {
        let _: i64 = redis::cmd("DEL").arg(chunk).query_async(&mut con).await?;
    }
    Ok(())
}

/// CPU seconds (user + system) used so far by this process and every process below it (vsftpd
/// and its sessions), reaped ones included (through their parents' `cutime`/`cstime`).
pub fn tree_cpu_secs() -> (f64, f64) {
    let me = std::process::id();
    let mut stats = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces) in parentheses.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // rest[0] = state, [1] = ppid, [11..=14] = utime stime cutime cstime.
        stats.push((pid, num(1) as u32, num(11) + num(12) + num(13) + num(14)));
    }
    let mut tree = std::collections::HashSet::from([me]);
    loop {
        let before = tree.len();
        for (pid, ppid, _) in &stats {
            if tree.contains(ppid) {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    let ticks: u64 = stats
        .iter()
        .filter(|(pid, _, _)| tree.contains(pid))
        .map(|(_, _, t)| t)
        .sum();
    let own = stats
        .iter()
        .find(|(pid, _, _)| *pid == me)
        .map_or(0, |(_, _, t)| *t);
    // USER_HZ: 100 on Linux. (whole tree, this process alone)
    (ticks as f64 / 100.0, own as f64 / 100.0)
}

/// (busy, total) jiffies of all cores, from /proc/stat.
pub fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}
