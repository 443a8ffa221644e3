//! The kernel's per-pod "wrote a request carrying a context" flags
//! (`TAGGER_POD_TAGGED`), read as shared memory.
//!
//! The proxy asks the kernel for a request's tag (a `bpf()` syscall) only on
//! connections from pods whose flag is set; a pod that never carried an
//! inbound context into a call (a client, a job, an entry point) pays
//! nothing per request. The kernel sets the flag before it writes the pod's
//! first tag, and both happen before the request's bytes are queued, so a
//! proxy that has read the request sees the flag if there is a tag.
use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;
use tagger_common::MAX_POD_SLOTS;

/// The flags array, mapped into this process.
pub struct PodFlags {
    base: NonNull<AtomicU64>,
    bytes: usize,
    // Keeps the map's fd for the life of the mapping (the mapping alone
    // would keep the map, but the fd names it in errors and dumps).
    _map: MapData,
}

// SAFETY: the mapping is shared memory accessed only through atomics.
unsafe impl Send for PodFlags {}
// SAFETY: as above.
unsafe impl Sync for PodFlags {}

impl PodFlags {
    /// Maps the array (created with `BPF_F_MMAPABLE`) read-write.
    pub fn map(map: MapData) -> std::io::Result<Self> {
        let page = 4096;
        let bytes = (MAX_POD_SLOTS as usize * 8).div_ceil(page) * page;
        // SAFETY: mmap(2) of a BPF array's fd at offset 0, as the kernel
        // documents for BPF_F_MMAPABLE arrays; checked for failure below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base =
            NonNull::new(addr.cast::<AtomicU64>()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self {
            base,
            bytes,
            _map: map,
        })
    }

    fn slot(&self, slot: u32) -> Option<&AtomicU64> {
        // SAFETY: in bounds of the mapping (checked), aligned (8-byte values
        // from a page-aligned base), alive as long as `self`.
        (slot < MAX_POD_SLOTS).then(|| unsafe { &*self.base.as_ptr().add(slot as usize) })
    }

    /// Has the pod in `slot` ever written a request carrying a context?
    pub fn is_set(&self, slot: u32) -> bool {
        self.slot(slot)
            .is_some_and(|flag| flag.load(Ordering::Acquire) != 0)
    }

    pub fn clear(&self, slot: u32) {
        if let Some(flag) = self.slot(slot) {
            flag.store(0, Ordering::Release);
        }
    }
}

impl Drop for PodFlags {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

/// Which slot each pod cgroup has. Slots of removed pods are reused, their
/// flag cleared first.
#[derive(Default)]
pub struct PodSlots {
    by_cgroup: HashMap<u64, u32>,
    free: Vec<u32>,
    next: u32,
}

impl PodSlots {
    pub fn get(&self, cgroup_id: u64) -> Option<u32> {
        self.by_cgroup.get(&cgroup_id).copied()
    }

    /// The slot of `cgroup_id` and whether it was just assigned (its flag
    /// must then be cleared before the kernel learns it); `None` when every
    /// slot is taken.
    pub fn assign(&mut self, cgroup_id: u64) -> Option<(u32, bool)> {
        if let Some(slot) = self.get(cgroup_id) {
            return Some((slot, false));
        }
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.next + 1 < MAX_POD_SLOTS => {
                self.next += 1;
                self.next
            }
            None => return None,
        };
        self.by_cgroup.insert(cgroup_id, slot);
        Some((slot, true))
    }

    /// Pods holding a slot.
    pub fn len(&self) -> usize {
        self.by_cgroup.len()
    }

    pub fn release(&mut self, cgroup_id: u64) {
        if let Some(slot) = self.by_cgroup.remove(&cgroup_id) {
            self.free.push(slot);
        }
    }

    /// Takes over the slots a predecessor assigned (read back from the
    /// pinned `TAGGER_POD_CGROUPS`), so that every pod keeps its slot and
    /// its flag through a handover.
    pub fn adopt(entries: impl IntoIterator<Item = (u64, u32)>) -> Self {
        let mut slots = Self::default();
        for (cgroup_id, slot) in entries {
            if slot == 0 || slot >= MAX_POD_SLOTS {
                continue;
            }
            slots.by_cgroup.insert(cgroup_id, slot);
            slots.next = slots.next.max(slot);
        }
        let taken: std::collections::HashSet<u32> = slots.by_cgroup.values().copied().collect();
        slots.free = (1..=slots.next).filter(|s| !taken.contains(s)).collect();
        slots
    }

    /// (cgroup id, slot) of every pod that has a slot.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.by_cgroup.iter().map(|(&cgroup, &slot)| (cgroup, slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_never_zero_stable_and_reused_after_release() {
        let mut slots = PodSlots::default();
        assert_eq!(slots.assign(100), Some((1, true)));
        assert_eq!(slots.assign(200), Some((2, true)));
        assert_eq!(slots.assign(100), Some((1, false)));
        slots.release(100);
        assert_eq!(slots.get(100), None);
        assert_eq!(
            slots.assign(300),
            Some((1, true)),
            "a released slot is reused"
        );
        let mut held: Vec<(u64, u32)> = slots.iter().collect();
        held.sort();
        assert_eq!(held, [(200, 2), (300, 1)]);
    }

    #[test]
    fn adopted_slots_are_kept_and_the_gaps_reused() {
        let mut slots = PodSlots::adopt([(100, 1), (200, 4), (300, 0)]);
        assert_eq!(slots.get(100), Some(1));
        assert_eq!(slots.get(200), Some(4));
        assert_eq!(slots.get(300), None, "slot 0 is never a pod's");
        let mut fresh: Vec<u32> = (0..3).map(|i| slots.assign(1000 + i).unwrap().0).collect();
        fresh.sort();
        assert_eq!(fresh, [2, 3, 5]);
        assert_eq!(slots.assign(100), Some((1, false)));
    }

    #[test]
    fn assignment_stops_at_capacity() {
        let mut slots = PodSlots::default();
        for cgroup in 1..MAX_POD_SLOTS as u64 {
            assert!(slots.assign(cgroup).is_some());
        }
        assert_eq!(slots.assign(u64::MAX), None);
        slots.release(5);
        assert_eq!(slots.assign(u64::MAX), Some((5, true)));
    }
}
