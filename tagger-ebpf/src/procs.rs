//! Which way each pod process's requests are correlated (`kind`), decided
//! by the daemon from the process's executable, never from its name.
//!
//! The kernel asks (`PROC_CLASSIFY` on `TAGGER_PROC_EVENTS`) when a pod's
//! process it does not know reads a request or sends one, and again when a
//! process execs (a new image: a shell's `exec ./app` turns Python-like
//! into Go under the same pid). Until the daemon answers, nothing the
//! process sends is trusted. When a probed Go process exits or execs, the
//! daemon is told to detach its uprobes (`PROC_EXIT`).
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, map},
    maps::{HashMap, RingBuf},
    programs::BtfTracePointContext,
};
use tagger_common::{MAX_PROCESSES, PROC_CLASSIFY, PROC_EXIT, ProcEvent, kind};

use crate::{golang, propagation};

/// By tgid: `kind::*`. Written by the daemon (the answer) and by the
/// kernel (PENDING on a question; removed at exit). A plain hash map, not
/// LRU: an entry must never silently turn back into "unknown".
#[map]
static TAGGER_PROC_KINDS: HashMap<u32, u32> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Questions and exits for the daemon: rare (once per process), so each
/// one wakes the reader.
#[map]
static TAGGER_PROC_EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024, 0);

/// The kind of the current process, `None` when unknown.
#[inline(always)]
pub(crate) fn kind_of(pid_tgid: u64) -> Option<u32> {
    // SAFETY: plain value copied out at once.
    unsafe { TAGGER_PROC_KINDS.get((pid_tgid >> 32) as u32) }.copied()
}

#[inline(always)]
fn tell(tgid: u32, what: u32) {
    let _ = TAGGER_PROC_EVENTS.output::<ProcEvent>(&ProcEvent { tgid, what }, 0);
}

/// Asks the daemon to classify the current process if it is a pod's and
/// was never asked about (the PENDING entry makes the question once).
#[inline(always)]
pub(crate) fn ask_classify(pid_tgid: u64) {
    // SAFETY: a helper without arguments.
    if !propagation::in_pod(unsafe { bpf_get_current_cgroup_id() }) {
        return;
    }
    let tgid = (pid_tgid >> 32) as u32;
    if TAGGER_PROC_KINDS
        .insert(tgid, kind::PENDING, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        tell(tgid, PROC_CLASSIFY);
    }
}

/// The process's main thread exits: its kind goes with it (a new process
/// reusing the pid starts unknown), and the daemon forgets a Go process
/// (detaching its uprobes). Other exits are not told: they are many.
#[inline(always)]
pub(crate) fn on_process_exit(tgid: u32) {
    // SAFETY: plain value copied out at once.
    let Some(was) = (unsafe { TAGGER_PROC_KINDS.get(tgid) }).copied() else {
        return;
    };
    let _ = TAGGER_PROC_KINDS.remove(tgid);
    if was == kind::GO || was == kind::GO_UNPROBED {
        golang::forget_process(tgid);
        tell(tgid, PROC_EXIT);
    }
}

/// `sched_process_exec(p, old_pid, bprm)`: the process runs a new image,
/// whatever it was before, and must be classified again.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn tagger_task_exec(_ctx: BtfTracePointContext) -> i32 {
    if !crate::active() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: plain value copied out at once.
    match (unsafe { TAGGER_PROC_KINDS.get(tgid) }).copied() {
        Some(was) => {
            if was == kind::GO || was == kind::GO_UNPROBED {
                golang::forget_process(tgid);
                tell(tgid, PROC_EXIT);
            }
            propagation::forget_process(tgid);
            let _ = TAGGER_PROC_KINDS.insert(tgid, kind::PENDING, 0);
            tell(tgid, PROC_CLASSIFY);
        }
        None => {
            propagation::forget_process(tgid);
            ask_classify(pid_tgid);
        }
    }
    0
}
