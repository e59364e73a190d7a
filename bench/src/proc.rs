//! The process's own memory figures from `/proc/self/status`: `VmHWM` (peak resident set) and
//! `VmRSS` (current). Linux only, which is where the fleet runs.

/// Peak and current resident set size, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub peak_kib: u64,
    pub current_kib: u64,
}

pub fn memory() -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    parse_status(&status)
}

fn parse_status(status: &str) -> anyhow::Result<Memory> {
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/self/status"))?;
        let value = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(value)
    };
    Ok(Memory {
        peak_kib: field("VmHWM:")?,
        current_kib: field("VmRSS:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_current_come_from_vmhwm_and_vmrss() -> anyhow::Result<()> {
        let m = parse_status("Name:\tbench\nVmHWM:\t   12345 kB\nVmRSS:\t    6789 kB\n")?;
        assert_eq!(
            m,
            Memory {
                peak_kib: 12345,
                current_kib: 6789
            }
        );
        assert!(parse_status("Name:\tbench\n").is_err());
        Ok(())
    }

    #[test]
    fn this_process_has_a_peak_at_least_its_current_size() -> anyhow::Result<()> {
        let m = memory()?;
        assert!(m.peak_kib >= m.current_kib && m.current_kib > 0, "{m:?}");
        Ok(())
    }
}
