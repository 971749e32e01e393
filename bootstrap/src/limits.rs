//! The open-files limit of a process that holds many links: a controller's fleet, a gateway's
//! starts.
//!
//! Each context a process starts or serves holds a few descriptors (a socket or pipes), and the
//! usual soft limit (1024) ends a fan-out at a few hundred hosts with `EMFILE`. [`raise_open_files`]
//! lifts the soft limit to the hard one, once per process; the programs the process service
//! starts afterwards get the soft limit the process had before (as Go does for the programs it
//! executes), since some still use `select` and break past 1024 descriptors.

use std::sync::OnceLock;

/// The soft limit before it was raised, when it was; whether raising was tried, and the limit now.
static RAISED: OnceLock<(Option<libc::rlimit>, u64)> = OnceLock::new();

/// Raise this process's open-files soft limit to its hard limit (once; later calls only say what
/// it is); the soft limit now.
#[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
pub fn raise_open_files() -> u64 {
    RAISED
        .get_or_init(|| {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            // SAFETY: getrlimit and setrlimit read and write the one struct given.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return (None, 1024);
                }
                // An unlimited hard limit is not one the kernel takes for open files.
                let to = if lim.rlim_max == libc::RLIM_INFINITY { 1 << 20 } else { lim.rlim_max };
                if lim.rlim_cur < to {
                    let raised = libc::rlimit { rlim_cur: to, rlim_max: lim.rlim_max };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                        tracing::debug!(from = lim.rlim_cur, to, "raised the open-files limit");
                        return (Some(lim), to as u64);
                    }
                }
            }
            (None, lim.rlim_cur as u64)
        })
        .1
}

/// The open-files limit to give a program this process starts: the one it had before
/// [`raise_open_files`] raised it, if it did.
pub(crate) fn for_programs() -> Option<libc::rlimit> {
    RAISED.get().and_then(|(before, _)| *before)
}
