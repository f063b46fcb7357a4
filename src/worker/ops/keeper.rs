//! The keeper: a process between the worker and an external program that stays until every
//! descendant of the program is gone, so that none outlives its run.
//!
//! A process whose parent exits is re-parented to its nearest ancestor that is a child
//! subreaper, else to init. The keeper is a subreaper and the program's parent: whatever the
//! program starts, even in a session of its own (`setsid`) or through a double fork, ends up
//! below the keeper, never above it. While the program runs the keeper reaps what ends below
//! it; once the program has exited it kills its remaining children round after round (a
//! killed child's own children are re-parented to it), reaps them, and exits as the program
//! did. Its exit thus means that nothing of the run is left, and the worker's `wait4` on it
//! counts the CPU time of every descendant. Other runs have keepers of their own, so ending
//! one run never touches another's processes.
//!
//! The keeper is forked in the child before exec, a copy of a multi-threaded process: it may
//! only make async-signal-safe calls, so it allocates nothing, reads its children from
//! `/proc/thread-self/children` (kernels built with `CONFIG_PROC_CHILDREN`, as distribution
//! kernels are) into a stack buffer, and leaves with `_exit`. Without that file it cannot list
//! what is left: it waits for it to end, and the kill at the timeout covers it.

use std::io;

use libc::{c_int, pid_t};

/// Bytes read from the children file at a time; a pid is at most 7 digits and a space.
const CHILDREN_READ_BYTES: usize = 1024;

/// Exit code of a keeper that lost track of the program (waitpid failed other than EINTR).
const KEEPER_LOST_PROGRAM_EXIT: c_int = 125;

/// Descriptors closed one by one on kernels without close_range(2) (before 5.9).
const FALLBACK_CLOSED_FDS: c_int = 65_536;

/// Called in the forked child before exec: returns in the process that goes on to execute the
/// program; in the other, the keeper, it never returns. Only async-signal-safe calls.
pub(super) fn split() -> io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fork(2) in a single-threaded child; both sides only make async-signal-safe
    // calls until the program side executes.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(()),
        program => keep(program),
    }
}

/// The keeper's whole life: wait for the program, clear what it left, exit as it did.
fn keep(program: pid_t) -> ! {
    // SAFETY: plain syscalls on integers, no memory of ours is touched.
    unsafe {
        // It holds a copy of the worker's memory (and its secrets): no core file, no ptrace
        // or /proc/PID/mem by another process of the program's user.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        // No pipe stays open here: the worker reads the program's output to its end, and its
        // spawn waits for the exec's close-on-exec error pipe to close.
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) != 0 {
            for fd in 0..FALLBACK_CLOSED_FDS {
                libc::close(fd);
            }
        }
        // The worker's handlers write to descriptors closed above.
        for signal in [libc::SIGCHLD, libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
    let status = wait_for(program);
    clear_below();
    exit_as(status)
}

fn errno() -> Option<i32> {
    io::Error::last_os_error().raw_os_error()
}

/// Reaps whatever ends below the keeper until the program itself does; its wait status.
fn wait_for(program: pid_t) -> c_int {
    loop {
        let mut status = 0;
        // SAFETY: `status` is valid and writable for the duration of the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid == program {
            return status;
        }
        if pid < 0 && errno() != Some(libc::EINTR) {
            // SAFETY: _exit(2) ends the process without running anything of the worker's.
            unsafe { libc::_exit(KEEPER_LOST_PROGRAM_EXIT) }
        }
    }
}

/// Kills and reaps every process below the keeper; returns once it has no child left.
fn clear_below() {
    loop {
        kill_children();
        let mut status = 0;
        // SAFETY: `status` is valid and writable for the duration of the call.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid < 0 && errno() != Some(libc::EINTR) {
            debug_assert_eq!(errno(), Some(libc::ECHILD));
            return;
        }
    }
}

/// SIGKILL to each child of the keeper listed in `/proc/thread-self/children` (the keeper
/// has one thread, so these are all its children).
fn kill_children() {
    // SAFETY: the path is a NUL-terminated constant.
    let fd = unsafe { libc::open(c"/proc/thread-self/children".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut buffer = [0u8; CHILDREN_READ_BYTES];
    let mut pid: pid_t = 0;
    loop {
        // SAFETY: `buffer` is valid and writable for its length.
        let read = unsafe { libc::read(fd, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read < 0 && errno() == Some(libc::EINTR) {
            continue;
        }
        let Ok(read) = usize::try_from(read) else { break };
        if read == 0 {
            break;
        }
        for &byte in &buffer[..read] {
            if byte.is_ascii_digit() {
                pid = pid.saturating_mul(10).saturating_add(pid_t::from(byte - b'0'));
            } else {
                kill_child(pid);
                pid = 0;
            }
        }
    }
    kill_child(pid);
    // SAFETY: `fd` was opened above and is closed once.
    unsafe {
        libc::close(fd);
    }
}

fn kill_child(pid: pid_t) {
    // Never 0 or -1, which would signal a group or every process of the user.
    if pid > 0 {
        // SAFETY: kill(2) has no memory effects; `pid` is an unreaped child of the keeper,
        // which alone reaps it, so the pid is not anyone else's.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Ends the keeper the way the program ended: the same exit code, or the same signal.
fn exit_as(status: c_int) -> ! {
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        // SAFETY: plain syscalls on integers; RLIMIT_CORE is 0 (set above): no core file.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::kill(libc::getpid(), signal);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        KEEPER_LOST_PROGRAM_EXIT
    };
    // SAFETY: _exit(2) ends the process without running anything of the worker's.
    unsafe { libc::_exit(code) }
}
