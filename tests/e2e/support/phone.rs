//! A phone that keeps re-registering in the background while a test attacks: a legitimate one,
//! so the test can show that sipguard never got in its way, or one with a stale password.
//!
//! Each registration is one SIPp run from the same address and port, so the phone is one client,
//! one session at sipguard, one peer at the PBX: register.xml (challenge, credentials, 200) for a
//! legitimate phone, register_rejected.xml (challenge, credentials, 401) for a stale one. A run
//! that fails is kept with its SIPp logs.

use super::{free_udp_addr, password, Kamailio, Sipp};
use anyhow::{anyhow, bail, Context};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// SIPp's own timeout for one registration: far above a loopback round trip, so only a dropped
/// or refused registration reaches it.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(8);
/// The same for a phone with a stale password, whose attempts are expected to go unanswered
/// once sipguard blocks it: short, so that each blocked attempt ends soon.
const STALE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often [`Phone::legit`] registers again.
const LEGIT_INTERVAL: Duration = Duration::from_secs(1);

/// A phone re-registering every `interval` until stopped.
#[derive(Debug)]
pub struct Phone {
    addr: SocketAddr,
    user: String,
    successes: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Phone {
    /// The legitimate phone the attack and operations tests keep registering beside whatever
    /// they do: `user` with its own password, from a free port on `ip`, every second.
    pub fn legit(
        pbx: &Kamailio,
        guard: SocketAddr,
        ip: Ipv4Addr,
        user: &str,
    ) -> anyhow::Result<Self> {
        let addr = free_udp_addr(ip)?;
        Self::start(pbx, guard, addr, user, password(user), LEGIT_INTERVAL)
    }

    /// Registers `user` from `addr` through `guard` once (an error if that fails), then keeps
    /// registering again every `interval` on a background thread.
    pub fn start(
        pbx: &Kamailio,
        guard: SocketAddr,
        addr: SocketAddr,
        user: &str,
        password: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let scenario = ("register.xml", REGISTER_TIMEOUT);
        Self::looping(pbx, guard, addr, user, password, scenario, interval)
    }

    /// A phone whose `password` is wrong: every `interval` it tries again, and each attempt
    /// succeeds when the PBX refuses the password (a second 401) and fails when it goes
    /// unanswered. The first attempt must be refused (an error otherwise).
    pub fn with_stale_password(
        pbx: &Kamailio,
        guard: SocketAddr,
        addr: SocketAddr,
        user: &str,
        password: &str,
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let scenario = ("register_rejected.xml", STALE_TIMEOUT);
        Self::looping(pbx, guard, addr, user, password, scenario, interval)
    }

    fn looping(
        pbx: &Kamailio,
        guard: SocketAddr,
        addr: SocketAddr,
        user: &str,
        password: &str,
        (scenario, timeout): (&'static str, Duration),
        interval: Duration,
    ) -> anyhow::Result<Self> {
        let dir = pbx.dir().to_owned();
        let register = {
            let (user, password) = (user.to_owned(), password.to_owned());
            move || {
                Sipp::new(scenario, &dir)
                    .remote(guard)
                    .local(addr)
                    .service(&user)
                    .auth(&user, &password)
                    .timeout(timeout)
                    .run()?
                    .ensure_success()
            }
        };
        register().with_context(|| {
            format!(
                "the phone {user} at {addr} ({scenario}) failed its first attempt; Kamailio's \
                 log:\n{}",
                pbx.log()
            )
        })?;
        let successes = Arc::new(AtomicUsize::new(1));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("phone-{user}-{addr}"))
            .spawn({
                let (successes, failures) = (Arc::clone(&successes), Arc::clone(&failures));
                move || {
                    // Waits out the interval, or returns at once when told to stop.
                    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval)
                    {
                        match register() {
                            Ok(()) => {
                                successes.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => failures
                                .lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .push(format!("{e:#}")),
                        }
                    }
                }
            })?;
        Ok(Phone {
            addr,
            user: user.to_owned(),
            successes,
            failures,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it registers from.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Successful registrations (attempts as the scenario expects) so far, the first included.
    pub fn successes(&self) -> usize {
        self.successes.load(Ordering::SeqCst)
    }

    /// Failed registrations so far.
    pub fn failures(&self) -> usize {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    /// Stops re-registering (after the registration under way, if any) and returns how many
    /// succeeded; an error with SIPp's logs if any failed.
    pub fn stop(self) -> anyhow::Result<usize> {
        let (user, addr) = (self.user.clone(), self.addr);
        let (successes, failures) = self.finish();
        if !failures.is_empty() {
            bail!(
                "the phone {user} at {addr} failed {} of {} registrations:\n{}",
                failures.len(),
                failures.len() + successes,
                failures.join("\n=====\n")
            );
        }
        Ok(successes)
    }

    /// Stops trying (after the attempt under way, if any) and returns the attempts that
    /// succeeded and the SIPp logs of those that failed.
    pub fn finish(mut self) -> (usize, Vec<String>) {
        let _ = self.shutdown();
        let failures = std::mem::take(
            &mut *self
                .failures
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        (self.successes(), failures)
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        drop(self.stop.take());
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow!("the phone's thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for Phone {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
