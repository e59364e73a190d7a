//! The server-side processes of one account's sessions, found in `/proc` and SIGKILLed, as a
//! crashed or restarted server would drop them: the control and data connections (or the SSH
//! connection) close under whatever is in flight. The listener itself stays up.

use super::Server;

/// SIGKILLs the server-side processes of `user`'s sessions on `server`; how many were killed.
///
/// vsftpd and sshd run a session as the account's Linux user, below a privileged half (killed
/// too, unless it is the listener); ProFTPD's virtual users share one uid, so its sessions are
/// found by the user name in their process title.
pub fn kill_sessions(server: Server, user: &str) -> usize {
    let uid = match server {
        Server::Proftpd => None,
        _ => {
            let out = std::process::Command::new("id")
                .args(["-u", user])
                .output()
                .unwrap_or_else(|e| panic!("harness: id: {e}"));
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        }
    };
    let procs = processes();
    let mut victims: Vec<u32> = Vec::new();
    for p in &procs {
        let mine = match uid {
            Some(uid) => p.uid == uid,
            None => p.cmdline.starts_with("proftpd: ") && p.cmdline.contains(user),
        };
        if !mine {
            continue;
        }
        victims.push(p.pid);
        // The privileged half: the parent, unless it is the listener itself (whose parent is
        // the harness's watchdog shell).
        if let Some(parent) = procs.iter().find(|q| q.pid == p.ppid)
            && (parent.cmdline.contains("vsftpd") || parent.cmdline.starts_with("sshd: "))
            && procs
                .iter()
                .find(|g| g.pid == parent.ppid)
                .is_some_and(|g| !g.cmdline.contains("harness-watchdog"))
        {
            victims.push(parent.pid);
        }
    }
    victims.sort_unstable();
    victims.dedup();
    for pid in &victims {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    victims.len()
}

struct Proc {
    pid: u32,
    ppid: u32,
    uid: u32,
    cmdline: String,
}

fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok())
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        if let (Some(ppid), Some(uid)) = (field("PPid:"), field("Uid:")) {
            out.push(Proc {
                pid,
                ppid,
                uid,
                cmdline,
            });
        }
    }
    out
}
