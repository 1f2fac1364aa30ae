//! How the relay's HTTP threads ask the kernel's scheduler for the core (the SMTP
//! and SMPP listeners run on tokio's workers, which do not ask).
//!
//! The relay threads answer clients; the store's writer and checkpointer, which share
//! the cores with them, work in bursts (a transaction of thousands of rows, a
//! checkpoint) off the clients' path. Linux's fair scheduler (EEVDF, 6.6 and later)
//! lets a running thread finish its slice (0.75 ms scaled up with the number of cores:
//! 1.4 ms as the kernel reported it on the 2-core machine measured) before a thread it woke gets the core, so a
//! reply could wait behind a burst for that long, and longer behind several. A thread may ask
//! for a shorter slice (Linux 6.12 and later: `sched_setattr` with `sched_runtime` on
//! a normal thread): its deadlines come sooner, so it takes the core soon after it
//! wakes, while its share of the core stays what its nice value gives it (unlike a
//! lower priority for the writer, which starved it at saturation: measured, dropped).
//!
//! Measured on one core shared by a relay thread, the writer and the checkpointer (64
//! connections, open loop at 21,500 requests/s, a 6.18 kernel). The same process,
//! its relay thread's slice switched between rounds: p99 3.7 / 5.0 / 9.3 / 10.8 ms with
//! the default, 3.4 / 4.0 / 5.7 / 4.8 ms with 0.1 ms; p99.9 6.0 / 7.3 / 17.1 / 28.9
//! against 6.1 / 7.0 / 9.7 / 11.9. A process of each build, alternating (nine rounds,
//! on a noisier host): p99 lower in six, median 6.2 → 5.8 ms. Closed loop at
//! saturation, no change (messages/s, commits, durable waits).

/// The slice a relay thread asks for: the shortest Linux takes.
pub const RELAY_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// Asks for [`RELAY_SLICE`] for the calling thread, keeping its policy and nice value.
/// A kernel that does not know custom slices ignores the value or refuses the call;
/// either way the thread runs as it did.
pub fn short_slices() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let mut attr = attributes()?;
        if attr.sched_policy != libc::SCHED_OTHER as u32 {
            return Ok(());
        }
        attr.sched_runtime = RELAY_SLICE.as_nanos() as u64;
        // SAFETY: `attr` is a whole `sched_attr` whose `size` says so; the call reads
        // no more than that and acts on the calling thread (pid 0) alone.
        if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The calling thread's scheduling attributes, `size` set to the structure's.
#[cfg(target_os = "linux")]
fn attributes() -> std::io::Result<libc::sched_attr> {
    use std::mem::{size_of, zeroed};
    let size = size_of::<libc::sched_attr>() as libc::c_uint;
    // SAFETY: `sched_attr` is plain data; the call is given its size, writes no more
    // than that into it, and reads the calling thread's (pid 0) attributes.
    unsafe {
        let mut attr: libc::sched_attr = zeroed();
        if libc::syscall(libc::SYS_sched_getattr, 0, &mut attr, size, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        attr.size = size;
        Ok(attr)
    }
}

/// The slice the calling thread runs with, as the kernel reports it (0 when it does
/// not keep one for normal threads).
#[cfg(all(test, target_os = "linux"))]
fn slice() -> std::io::Result<u64> {
    Ok(attributes()?.sched_runtime)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A thread that asks for short slices gets them (on a kernel that keeps custom
    /// slices, 6.12 and later: it reports a default of its own before), keeping its
    /// nice value.
    #[test]
    fn a_thread_gets_the_slice_it_asks_for() {
        std::thread::spawn(|| {
            // SAFETY: getpriority(2) and nice(2) on the calling thread; a nice value
            // of -1 is told from an error by errno, and no test runs at -1.
            let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let lowered = unsafe { libc::nice(1) };
            let before = slice().unwrap();
            short_slices().unwrap();
            let after = slice().unwrap();
            if before != 0 {
                assert_eq!(after, RELAY_SLICE.as_nanos() as u64, "was {before}");
            }
            assert_eq!(nice(), lowered, "the nice value is kept");
        })
        .join()
        .unwrap();
    }
}
