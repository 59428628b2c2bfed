//! Live reload: re-read the config file and the allowlist, and apply what can change without a
//! restart.
//!
//! SIGHUP and the admin API's `POST /reload` both come here. A valid file replaces the policy's
//! rules (allowlist, deny list, detection rules, dial rules, call rates, and the country filter
//! with its database, which validation reads again) while its state tables stay, so sessions and
//! bans live on, and so does the kernel shield's limit (`nftables.untrusted_limit`, through a
//! hook). Keys bound at start (listen addresses, the PBX, table sizes, the services' addresses,
//! the journal, the nftables table) keep their running values, each named in a warning. An invalid file
//! changes nothing: every problem is logged and `sipguard_config_reloads_total{result="error"}`
//! counts it. Other parts (the TLS front's certificates) hook in with [`Reloader::on_reload`].

use crate::config::{self, Config, Overrides};
use metrics::counter;
use sipguard_policy::{Policy, PolicyConfig};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

/// Something else to reload with the config: gets the new config once it validated; an error
/// (logged, counted) fails the reload.
pub type ReloadHook = Box<dyn Fn(&Config) -> Result<(), String> + Send + Sync>;

/// What puts a reloaded config's policy settings in force, when something adds to them (the
/// allowlist's resolved names); the policy's own `reconfigure` otherwise.
pub type PolicyApply =
    Box<dyn Fn(PolicyConfig) -> Result<(), sipguard_policy::BuildError> + Send + Sync>;

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new settings are in force, except the keys listed, which need a restart.
    Applied {
        /// Keys that changed but keep their running value until a restart.
        restart_required: Vec<&'static str>,
    },
    /// Nothing changed; every problem found.
    Rejected {
        /// One line per problem, naming file and key.
        problems: Vec<String>,
    },
}

/// Re-reads the configuration the program started with and applies it.
pub struct Reloader {
    path: Option<PathBuf>,
    overrides: Overrides,
    running: Mutex<Config>,
    policy: Arc<Policy>,
    hooks: Mutex<Vec<ReloadHook>>,
    apply_policy: Mutex<Option<PolicyApply>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the config read from `path` (the built-in default when `None`) with
    /// `overrides`, now `running` with `policy`.
    pub fn new(
        path: Option<PathBuf>,
        overrides: Overrides,
        running: Config,
        policy: Arc<Policy>,
    ) -> Self {
        for result in ["ok", "error"] {
            counter!("sipguard_config_reloads_total", "result" => result).increment(0);
        }
        Reloader {
            path,
            overrides,
            running: Mutex::new(running),
            policy,
            hooks: Mutex::new(Vec::new()),
            apply_policy: Mutex::new(None),
        }
    }

    /// Adds something to reload with the config.
    pub fn on_reload(&self, hook: ReloadHook) {
        self.hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    /// Puts reloaded policy settings in force through `apply` instead of the policy's own
    /// `reconfigure`.
    pub fn apply_policy_with(&self, apply: PolicyApply) {
        *self
            .apply_policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(apply);
    }

    /// The config in force.
    pub fn running(&self) -> Config {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the config and applies it; logs and counts the result.
    pub fn reload(&self) -> Outcome {
        let origin = self.path.as_deref().map_or_else(
            || config::DEFAULT_ORIGIN.to_owned(),
            |p| p.display().to_string(),
        );
        let outcome = self.apply(config::load_with(self.path.as_deref(), &self.overrides));
        match &outcome {
            Outcome::Applied { restart_required } => {
                counter!("sipguard_config_reloads_total", "result" => "ok").increment(1);
                if !restart_required.is_empty() {
                    tracing::warn!(
                        config = %origin,
                        keys = %restart_required.join(", "),
                        "these settings changed but take effect only after a restart; the running values stay"
                    );
                }
                tracing::info!(config = %origin, "configuration reloaded");
            }
            Outcome::Rejected { problems } => {
                counter!("sipguard_config_reloads_total", "result" => "error").increment(1);
                for problem in problems {
                    tracing::error!(config = %origin, problem = %problem, "reload refused");
                }
                tracing::error!(
                    config = %origin,
                    problems = problems.len(),
                    "configuration not reloaded; the running configuration stays"
                );
            }
        }
        outcome
    }

    fn apply(&self, loaded: Result<Config, config::ConfigErrors>) -> Outcome {
        let mut new = match loaded {
            Ok(config) => config,
            Err(errors) => {
                return Outcome::Rejected {
                    problems: errors.to_string().lines().map(str::to_owned).collect(),
                }
            }
        };
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let restart_required = keep_bound_settings(&running, &mut new);
        let applied = match &*self
            .apply_policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(apply) => apply(new.policy.clone()),
            None => self.policy.reconfigure(new.policy.clone()),
        };
        if let Err(err) = applied {
            return Outcome::Rejected {
                problems: vec![format!("rules.scanner.user_agents: {err}")],
            };
        }
        let hooks = self.hooks.lock().unwrap_or_else(PoisonError::into_inner);
        let failures: Vec<String> = hooks.iter().filter_map(|hook| hook(&new).err()).collect();
        *running = new;
        if failures.is_empty() {
            Outcome::Applied { restart_required }
        } else {
            Outcome::Rejected { problems: failures }
        }
    }
}

/// Puts the running values back into `new` for every setting bound at start, and names those
/// that differed.
fn keep_bound_settings(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut keep = |key: &'static str, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    keep("listen.udp", new.listen_udp != running.listen_udp);
    keep("listen.tcp", new.listen_tcp != running.listen_tcp);
    keep("listen.tls", new.listen_tls != running.listen_tls);
    keep("tcp", new.streams != running.streams);
    keep("pbx.address", new.relay.pbx != running.relay.pbx);
    keep(
        "pbx.upstream_bind",
        new.relay.upstream_bind != running.relay.upstream_bind,
    );
    keep(
        "sessions.idle_timeout",
        new.relay.session_idle != running.relay.session_idle,
    );
    keep(
        "sessions.max",
        new.relay.max_sessions != running.relay.max_sessions,
    );
    keep(
        "limits.max_tracked_sources",
        new.policy.max_tracked_sources != running.policy.max_tracked_sources,
    );
    keep(
        "rules.repeat_offenders",
        new.policy.repeat != running.policy.repeat,
    );
    keep(
        "rules.ipv6_prefix.length",
        new.policy.ipv6_prefix_len != running.policy.ipv6_prefix_len,
    );
    keep("metrics.listen", new.ops.metrics != running.ops.metrics);
    keep("admin.listen", new.ops.admin != running.ops.admin);
    keep(
        "admin.token_file",
        new.ops.admin_token != running.ops.admin_token,
    );
    keep("journal.path", new.ops.journal != running.ops.journal);
    keep(
        "feeds.bans_file",
        new.feeds.bans_file != running.feeds.bans_file,
    );
    new.feeds.bans_file = running.feeds.bans_file.clone();
    keep("outbound", new.outbound != running.outbound);
    // Whether the offload runs, and its table, are bound at start; the shield's limit follows.
    let table = |config: &Config| config.nftables.as_ref().map(|nft| nft.table.clone());
    keep("nftables", table(new) != table(running));
    let untrusted_limit = new.nftables.as_ref().map(|nft| nft.untrusted_limit);
    keep("cluster", new.cluster != running.cluster);
    new.listen_udp = running.listen_udp.clone();
    new.listen_tcp = running.listen_tcp.clone();
    new.listen_tls = running.listen_tls.clone();
    new.streams = running.streams.clone();
    new.relay = running.relay.clone();
    new.policy.max_tracked_sources = running.policy.max_tracked_sources;
    new.policy.repeat = running.policy.repeat;
    new.policy.ipv6_prefix_len = running.policy.ipv6_prefix_len;
    new.ops = running.ops.clone();
    new.outbound = running.outbound;
    new.nftables = running.nftables.clone();
    if let (Some(nft), Some(limit)) = (&mut new.nftables, untrusted_limit) {
        nft.untrusted_limit = limit;
    }
    new.cluster = running.cluster.clone();
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use sipguard_policy::AllowlistMode;
    use std::io::Write;

    fn reloader(dir: &std::path::Path, text: &str) -> (Reloader, Arc<Policy>, PathBuf) {
        let path = dir.join("sipguard.yaml");
        std::fs::write(&path, text).unwrap();
        let config = config::load(&path).unwrap();
        let policy = crate::policy(&config).unwrap();
        let reloader = Reloader::new(
            Some(path.clone()),
            Overrides::default(),
            config,
            Arc::clone(&policy),
        );
        (reloader, policy, path)
    }

    #[test]
    fn a_valid_change_replaces_the_rules_and_names_keys_that_need_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, policy, path) =
            reloader(dir.path(), "listen:\n  udp: [\"127.0.0.1:5070\"]\n");
        std::fs::write(
            dir.path().join("allow.yaml"),
            "offices:\n  - name: hq\n    cidrs: [192.0.2.0/24]\n",
        )
        .unwrap();
        std::fs::write(
            &path,
            "listen:\n  udp: [\"127.0.0.1:5071\"]\nallowlist:\n  file: allow.yaml\n  mode: enforce\n\
             rules:\n  ipv6_prefix:\n    length: 48\n",
        )
        .unwrap();
        assert_eq!(
            reloader.reload(),
            Outcome::Applied {
                restart_required: vec!["listen.udp", "rules.ipv6_prefix.length"]
            }
        );
        assert_eq!(
            policy.config().ipv6_prefix_len,
            64,
            "prefix bans keep their length"
        );
        assert_eq!(policy.config().allowlist_mode, AllowlistMode::Enforce);
        assert_eq!(
            reloader.running().listen_udp,
            ["127.0.0.1:5070".parse().unwrap()]
        );
    }

    #[test]
    fn the_shields_limit_follows_a_reload_while_the_table_needs_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, _, path) = reloader(
            dir.path(),
            "nftables: {enabled: true, untrusted_limit: 200}\n",
        );
        let limit = |reloader: &Reloader| reloader.running().nftables.map(|n| n.untrusted_limit);
        std::fs::write(&path, "nftables: {enabled: true, untrusted_limit: 0}\n").unwrap();
        assert_eq!(
            reloader.reload(),
            Outcome::Applied {
                restart_required: vec![]
            }
        );
        assert_eq!(limit(&reloader), Some(0));
        std::fs::write(
            &path,
            "nftables: {enabled: true, table: other, untrusted_limit: 900}\n",
        )
        .unwrap();
        assert_eq!(
            reloader.reload(),
            Outcome::Applied {
                restart_required: vec!["nftables"]
            }
        );
        let running = reloader.running().nftables.unwrap();
        assert_eq!(
            (running.table.as_str(), running.untrusted_limit),
            ("sipguard", 900)
        );
        // Turned off: the offload runs on until a restart, with the limit it had.
        std::fs::write(&path, "nftables: {enabled: false, untrusted_limit: 5}\n").unwrap();
        assert_eq!(
            reloader.reload(),
            Outcome::Applied {
                restart_required: vec!["nftables"]
            }
        );
        assert_eq!(limit(&reloader), Some(900));
    }

    #[test]
    fn an_invalid_file_keeps_the_running_rules_and_reports_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, policy, path) = reloader(dir.path(), "trust_for: 1h\n");
        let before = policy.config();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"deny: [nonsense]\nsessions:\n  max: 0\n")
            .unwrap();
        let Outcome::Rejected { problems } = reloader.reload() else {
            panic!("an invalid file was applied");
        };
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("sessions.max") || problems[1].contains("sessions.max"));
        assert_eq!(policy.config(), before);
    }

    #[test]
    fn hooks_see_the_new_config_and_their_failure_fails_the_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (reloader, _, _) = reloader(dir.path(), "");
        let seen = Arc::new(Mutex::new(0));
        let counter = Arc::clone(&seen);
        reloader.on_reload(Box::new(move |_| {
            *counter.lock().unwrap() += 1;
            Ok(())
        }));
        assert!(matches!(reloader.reload(), Outcome::Applied { .. }));
        reloader.on_reload(Box::new(|_| Err("certificate unreadable".to_owned())));
        assert_eq!(
            reloader.reload(),
            Outcome::Rejected {
                problems: vec!["certificate unreadable".to_owned()]
            }
        );
        assert_eq!(*seen.lock().unwrap(), 2);
    }
}
