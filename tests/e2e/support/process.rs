//! Child processes that are stopped when their handle drops: each runs in its own process group,
//! gets SIGTERM by PID first (Kamailio then stops its own children), then SIGKILL to its group.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a process gets to exit after SIGTERM before its group is killed.
const TERM_GRACE: Duration = Duration::from_secs(5);

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Guarded {
    name: String,
    child: Child,
    status: Option<ExitStatus>,
}

impl Guarded {
    /// Starts `command` in a new process group.
    pub fn spawn(name: &str, mut command: Command) -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
        let child = command
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e} (scripts/install-test-deps.sh installs the test peers)")))?;
        Ok(Guarded {
            name: name.to_owned(),
            child,
            status: None,
        })
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit, at most `timeout`; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Takes the child's stderr, if it was piped.
    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends `signal` to the process (not its group) while it runs.
    pub fn signal(&mut self, signal_number: libc::c_int) {
        if matches!(self.try_wait(), Ok(None)) {
            signal(self.child.id() as libc::pid_t, signal_number);
        }
    }

    /// Sends SIGINT to the process (not its group), as Ctrl-C would: tools that catch it (the
    /// sipvicious scripts) print their results before they exit.
    pub fn interrupt(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            signal(self.child.id() as libc::pid_t, libc::SIGINT);
        }
    }

    /// Stops the process if it is still running: SIGTERM to its PID, SIGKILL to its process
    /// group if it lingers, and SIGKILL to the group once more for any child it left behind.
    /// Returns its exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if !matches!(self.try_wait(), Ok(None)) {
            return self.status;
        }
        let pid = self.child.id() as libc::pid_t;
        signal(pid, libc::SIGTERM);
        if !matches!(self.wait_timeout(TERM_GRACE), Ok(Some(_))) {
            eprintln!(
                "{} (pid {pid}) ignored SIGTERM; killing its process group",
                self.name
            );
            signal(-pid, libc::SIGKILL);
            self.status = self.child.wait().ok();
        }
        // Only just reaped: the group id cannot have been reused while a member lived, so this
        // reaches only our own leftovers; ESRCH (nothing left) is the normal case.
        signal(-pid, libc::SIGKILL);
        self.status
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(pid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the ids are those of a
    // child this process started (or its process group).
    unsafe {
        libc::kill(pid, signal);
    }
}
