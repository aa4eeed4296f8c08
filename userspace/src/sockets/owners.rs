//! Which process holds a socket: the `socket:[INODE]` links under /proc/PID/fd.
//! Names only help a person read `check`'s table (`docker-proxy`, `postgres`);
//! nothing is decided on them, since any process can call itself anything.

use std::collections::HashMap;

/// Process name (`comm`) by socket inode, for the inodes in `wanted`. Processes
/// that vanish or cannot be read are skipped.
pub fn owners(wanted: &[u32]) -> HashMap<u32, String> {
    let mut found = HashMap::new();
    if wanted.is_empty() {
        return found;
    }
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return found;
    };
    for process in processes.filter_map(Result::ok) {
        let pid = process.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(process.path().join("fd")) else {
            continue;
        };
        let mut name = None;
        for fd in fds.filter_map(Result::ok) {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            if !wanted.contains(&inode) || found.contains_key(&inode) {
                continue;
            }
            let name = name.get_or_insert_with(|| {
                std::fs::read_to_string(process.path().join("comm"))
                    .map(|c| c.trim_end().to_owned())
                    .unwrap_or_default()
            });
            found.insert(inode, name.clone());
        }
    }
    found
}
