//! Asks the kernel to run a connector thread promptly when a miner's submit wakes it on a busy
//! machine.
//!
//! Linux's fair scheduler (EEVDF, 6.6 and later) lets a thread that has just woken preempt the
//! running one only when its virtual deadline comes first, and a thread's deadline lies one
//! slice ahead of it. With the default slice (0.75 ms × (1 + log2 CPUs)) and slice ends noticed
//! at the scheduler tick (4 ms at HZ=250), a CPU-bound neighbour (a hashing process, a backup,
//! the load-test harness) keeps the CPU for milliseconds after the submit arrived, and the
//! miner's answer waits that long. Since 6.12 a thread may ask for its own slice
//! (`sched_attr.sched_runtime`, clamped by the kernel to 0.1–100 ms) without privilege. A short
//! slice gives an early deadline, so the woken connector runs at once; a connector turn is tens
//! of µs, inside it. The thread's share of the CPU (its weight, from its nice value) is
//! unchanged: it is asked to run sooner, in shorter pieces, not more.
//!
//! Kernels before 6.12 take the request and ignore it, and other schedulers refuse it;
//! [`request_slice`] reports what the kernel says the thread's slice is afterwards.

use std::io;
use std::time::Duration;

/// What became of a slice request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceOutcome {
    /// The kernel reports this slice for the thread now.
    Granted(Duration),
    /// The kernel took the request but reports no slice of its own (before 6.12).
    Ignored,
    /// The thread runs under a real-time, deadline or idle policy an operator chose: left alone.
    NotFair,
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

fn get_attr() -> io::Result<libc::sched_attr> {
    // SAFETY: sched_attr is plain integers, valid zeroed; the kernel writes at most `size`
    // bytes into it; pid 0 is the calling thread.
    unsafe {
        let mut attr: libc::sched_attr = std::mem::zeroed();
        let size = std::mem::size_of::<libc::sched_attr>() as libc::c_uint;
        if libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut attr as *mut libc::sched_attr,
            size,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(attr)
    }
}

/// Asks for `slice` as the calling thread's scheduler slice, keeping its policy and nice value.
pub fn request_slice(slice: Duration) -> io::Result<SliceOutcome> {
    let mut attr = get_attr()?;
    if attr.sched_policy != SCHED_OTHER && attr.sched_policy != SCHED_BATCH {
        return Ok(SliceOutcome::NotFair);
    }
    attr.size = std::mem::size_of::<libc::sched_attr>() as u32;
    attr.sched_flags = 0;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid sched_attr of the size it declares; pid 0 is the calling
    // thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    match get_attr()?.sched_runtime {
        0 => Ok(SliceOutcome::Ignored),
        ns => Ok(SliceOutcome::Granted(Duration::from_nanos(ns))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        // SAFETY: getpriority has no memory preconditions; who 0 is the calling thread.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
    }

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_within_the_kernel_s_bounds_and_keeps_its_nice() {
        std::thread::spawn(|| {
            // SAFETY: as above; raising one's own nice value needs no privilege.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 3) };
            let before = nice();
            match request_slice(Duration::from_micros(300)).expect("sched_setattr") {
                // 6.12 and later: the slice as asked, and a slice under the kernel's floor of
                // 0.1 ms comes back raised to it.
                SliceOutcome::Granted(s) => {
                    assert_eq!(s, Duration::from_micros(300));
                    let floor = request_slice(Duration::from_micros(10)).expect("sched_setattr");
                    assert_eq!(floor, SliceOutcome::Granted(Duration::from_micros(100)));
                }
                SliceOutcome::Ignored => {}
                SliceOutcome::NotFair => panic!("a new thread runs under the fair scheduler"),
            }
            assert_eq!(nice(), before, "the nice value is kept");
        })
        .join()
        .expect("the thread ran");
    }
}
