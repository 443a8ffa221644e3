//! Where the kernel maps are pinned, so that a daemon taking over from
//! another (a restart, an upgrade) works on the very same maps: the flows
//! redirected but not yet accepted, the contexts of requests in flight, the
//! pod slots and the process kinds survive the handover.
//!
//! Only maps are pinned, never links: the programs stay attached through
//! links each daemon owns, so a daemon killed with -9 still fails open at
//! once. Maps pinned by a daemon that died are stale and are not trusted: a
//! daemon that starts without a live predecessor removes them first.
use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use tracing::info;

/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot parse the eBPF object to key its maps: {0}")]
    Object(String),
    #[error("{path} is not a bpf filesystem and mounting one there failed: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot prepare the pin directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The pin directory of one map layout under a bpf filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pins {
    /// `<bpffs>/tagger/<layout>`.
    pub dir: PathBuf,
    /// The layout key: a hash of every map's name, type, key and value
    /// size, capacity and flags. Two builds share maps only if it is equal.
    pub layout: String,
}

impl Pins {
    /// The pins of `object`'s map layout under the bpf filesystem `bpffs`.
    pub fn for_object(bpffs: &Path, object: &[u8]) -> Result<Self, PinError> {
        let layout = layout_key(object)?;
        Ok(Self {
            dir: bpffs.join("tagger").join(&layout),
            layout,
        })
    }

    /// Makes sure `bpffs` is a bpf filesystem (mounting one there if not,
    /// as cilium does) and the directory exists.
    pub fn prepare(&self, bpffs: &Path) -> Result<(), PinError> {
        if !is_bpffs(bpffs) {
            std::fs::create_dir_all(bpffs).map_err(|source| PinError::Dir {
                path: bpffs.to_path_buf(),
                source,
            })?;
            mount_bpffs(bpffs).map_err(|source| PinError::Mount {
                path: bpffs.to_path_buf(),
                source,
            })?;
            info!(path = %bpffs.display(), "mounted a bpf filesystem for the pinned maps");
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| PinError::Dir {
            path: self.dir.clone(),
            source,
        })
    }

    /// Where map `name` is pinned.
    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Removes every tagger pin under `bpffs` (all layouts): maps left by
    /// a daemon that is gone are not trusted, and maps no program uses
    /// any more are freed.
    pub fn remove_all(bpffs: &Path) {
        let root = bpffs.join("tagger");
        let Ok(layouts) = std::fs::read_dir(&root) else {
            return;
        };
        for layout in layouts.flatten() {
            Self::remove_dir(&layout.path());
        }
        let _ = std::fs::remove_dir(&root);
    }

    /// Unpins this layout's maps (the last daemon using them stops).
    pub fn remove(&self) {
        Self::remove_dir(&self.dir);
    }

    fn remove_dir(dir: &Path) {
        if let Ok(pins) = std::fs::read_dir(dir) {
            for pin in pins.flatten() {
                let _ = std::fs::remove_file(pin.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
}

/// FNV-1a: stable across Rust versions, unlike `DefaultHasher`, so that two
/// builds by different compilers agree on equal layouts.
fn fnv1a(hash: &mut u64, bytes: &[u8]) {
    for byte in bytes {
        *hash ^= u64::from(*byte);
        *hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
}

/// The key of the object's map layout (data sections excluded: they are
/// per load, never shared).
pub fn layout_key(object: &[u8]) -> Result<String, PinError> {
    let parsed = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    let mut maps: Vec<_> = parsed
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    maps.sort_by(|a, b| a.0.cmp(b.0));
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (name, map) in maps {
        fnv1a(&mut hash, name.as_bytes());
        for field in [
            map.map_type(),
            map.key_size(),
            map.value_size(),
            map.max_entries(),
            map.map_flags(),
        ] {
            fnv1a(&mut hash, &field.to_le_bytes());
        }
    }
    // Meanings the sizes cannot show (a field reordered, a flag's sense).
    fnv1a(&mut hash, &tagger_common::MAP_LAYOUT_VERSION.to_le_bytes());
    Ok(format!("{hash:016x}"))
}

/// The names of the maps to pin: every named map of the object.
pub fn map_names(object: &[u8]) -> Result<Vec<String>, PinError> {
    let parsed = aya_obj::Object::parse(object).map_err(|e| PinError::Object(e.to_string()))?;
    Ok(parsed
        .maps
        .keys()
        .filter(|name| !name.starts_with('.'))
        .cloned()
        .collect())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs(2) writes into the zeroed struct we own; the path is
    // a NUL-terminated string that outlives the call.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

fn mount_bpffs(path: &Path) -> std::io::Result<()> {
    let target = CString::new(path.as_os_str().as_encoded_bytes())?;
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: mount(2) with NUL-terminated strings that outlive the call and
    // no data argument.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_key_is_stable_and_covers_every_named_map() {
        let object = super::super::OBJECT;
        let a = layout_key(object).unwrap();
        assert_eq!(a, layout_key(object).unwrap());
        assert_eq!(a.len(), 16);
        let names = map_names(object).unwrap();
        for name in [
            tagger_common::names::MAP_CONFIG,
            tagger_common::names::MAP_FLOWS,
            tagger_common::names::MAP_EVENTS,
            tagger_common::names::MAP_POD_TAGGED,
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn fnv1a_known_values() {
        // Reference values of 64-bit FNV-1a.
        for (input, want) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut hash = 0xcbf2_9ce4_8422_2325u64;
            fnv1a(&mut hash, input);
            assert_eq!(hash, want, "{input:?}");
        }
    }
}
