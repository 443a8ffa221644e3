//! cgroup v2 helpers. A cgroup's id (what `bpf_get_current_cgroup_id()`
//! returns) is the inode number of its directory.
use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

/// Where cgroup v2 is mounted: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones (like the dev VMs).
pub fn v2_root() -> io::Result<PathBuf> {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(candidate).join("cgroup.procs").exists() && is_cgroup2(candidate) {
            return Ok(PathBuf::from(candidate));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no cgroup v2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified",
    ))
}

fn is_cgroup2(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines().any(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                fields.get(4) == Some(&path) && line.contains(" - cgroup2 ")
            })
        })
        .unwrap_or(false)
}

pub fn id_of(path: &Path) -> io::Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// The cgroup v2 id of this process.
pub fn own_id() -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup v2 line in /proc/self/cgroup",
            )
        })?;
    id_of(&v2_root()?.join(relative.trim_start_matches('/')))
}

/// Pids in a cgroup (not its children).
pub fn pids(path: &Path) -> io::Result<Vec<i32>> {
    Ok(std::fs::read_to_string(path.join("cgroup.procs"))?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}
