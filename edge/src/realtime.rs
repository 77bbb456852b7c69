//! Runs a connector thread under the real-time FIFO policy, so a miner's submit is served as
//! soon as it arrives whatever else the machine is doing.
//!
//! Under the fair scheduler a woken connector waits for the CPU whenever the thread running
//! there is still owed time: up to a scheduler tick (4 ms at HZ=250) behind a busy neighbour,
//! even with a short slice ([`crate::sched_slice`]). That wait, not the work, set the edge's
//! latency tail on a shared machine. A `SCHED_FIFO` thread preempts every fair-class thread the
//! moment it wakes. The price is that it is woken for every submit, and a wake-up per share costs
//! more than serving it; so a busy real-time connector also gathers (see [`crate::pacer`]):
//! once submits come faster than one per gather time, it sleeps that long after each turn and
//! serves what came meanwhile in one turn. The gather also bounds the CPU a real-time connector
//! can take from the rest of the machine: it runs without sleeping only while every turn finds
//! a full load of ready sockets.
//!
//! Needs `CAP_SYS_NICE` or an `RLIMIT_RTPRIO` at least the priority asked for (systemd:
//! `LimitRTPRIO=`); without either the kernel refuses and the connector stays fair-scheduled.

use std::io;

/// Highest priority `SCHED_FIFO` takes on Linux.
pub const MAX_PRIORITY: u8 = 99;

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1..=99). Fails with
/// `PermissionDenied` when the process may not use real-time priorities.
pub fn request_fifo(priority: u8) -> io::Result<()> {
    if !(1..=MAX_PRIORITY).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("real-time priority {priority} is outside 1..={MAX_PRIORITY}"),
        ));
    }
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: `param` is a valid sched_param; pid 0 is the calling thread (Linux schedules
    // threads, not processes).
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the calling thread runs under `SCHED_FIFO` now.
pub fn is_fifo() -> bool {
    // SAFETY: no memory is passed; pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) == libc::SCHED_FIFO }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_is_made_real_time_or_told_why_not() {
        std::thread::spawn(|| {
            assert!(!is_fifo(), "a new thread runs under the fair scheduler");
            match request_fifo(5) {
                Ok(()) => assert!(is_fifo()),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
                    assert!(!is_fifo());
                }
            }
        })
        .join()
        .expect("the thread ran");
    }

    #[test]
    fn priorities_outside_the_kernel_s_range_are_refused_before_asking() {
        for bad in [0, 100, 255] {
            let e = request_fifo(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }
}
