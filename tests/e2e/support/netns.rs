//! A network namespace of the calling thread's own, for addresses the host's loopback lacks:
//! IPv6 has only ::1, so forty addresses of one /64 need a namespace where they can be added to
//! `lo` without touching the host (or the other tests running beside).
//!
//! unshare(2) with CLONE_NEWNET moves only the calling thread (it needs CAP_SYS_ADMIN: root, as
//! the suite runs in CI). Every socket it opens afterwards, every thread it spawns (an in-process
//! sipguard's runtime) and every process it starts (Kamailio, `ip`) lives in the namespace, which
//! goes away with the last of them. Run the whole scenario on a thread of its own
//! ([`in_private_namespace`]) so the test harness's threads stay where they were.

use anyhow::{bail, ensure, Context};
use std::io::Write;
use std::net::Ipv6Addr;
use std::process::{Command, Stdio};

/// Runs `scenario` on a new thread inside a new network namespace whose `lo` is up (127.0.0.1/8
/// and ::1 as usual) and also carries `addrs` (each as a /64, without duplicate detection).
pub fn in_private_namespace<T: Send>(
    addrs: &[Ipv6Addr],
    scenario: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_new_namespace()?;
                add_addresses(addrs)?;
                scenario()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn enter_new_namespace() -> anyhow::Result<()> {
    // SAFETY: unshare(2) takes a flag word and touches no memory of ours; CLONE_NEWNET affects the
    // calling thread only, which is a thread this module spawned for the purpose.
    let result = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        bail!("cannot create a network namespace (needs root: CAP_SYS_ADMIN): {error}");
    }
    Ok(())
}

fn add_addresses(addrs: &[Ipv6Addr]) -> anyhow::Result<()> {
    let mut batch = String::from("link set lo up\n");
    for addr in addrs {
        batch.push_str(&format!("addr add {addr}/64 dev lo nodad\n"));
    }
    let mut ip = Command::new(ip_command())
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ip (iproute2)")?;
    ip.stdin
        .take()
        .context("no stdin")?
        .write_all(batch.as_bytes())?;
    let out = ip.wait_with_output()?;
    ensure!(
        out.status.success(),
        "ip -batch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Where Debian installs `ip` (/usr/sbin or /sbin, which a user's PATH may lack).
fn ip_command() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())
        .unwrap_or("ip")
}
