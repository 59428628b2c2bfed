//! The `nftables` and `cluster` sections: where bans go beyond this process (the kernel's
//! nftables, the other nodes through Redis). Both are off unless the file turns them on.

use super::{expected_at, Validator};
use crate::cluster::ClientError;
use crate::config::error::quote;
use crate::config::raw::{RawCluster, RawNftables, RawRedis};
use crate::config::{ClusterConfig, NftConfig, Problem};
use sipguard_relay::TlsFiles;
use std::path::{Path, PathBuf};

const DEFAULT_KEY_PREFIX: &str = "sipguard:";

impl Validator<'_, '_> {
    /// `nftables`: `None` unless `enabled: true`.
    pub(super) fn nftables(&mut self, raw: RawNftables) -> Option<Option<NftConfig>> {
        let enabled = match raw.enabled.as_deref() {
            None | Some("false") => Some(false),
            Some("true") => Some(true),
            Some(text) => {
                self.invalid_at("nftables.enabled", text);
                None
            }
        };
        let default = NftConfig::default();
        let table = raw.table.unwrap_or(default.table);
        let table_ok = (1..=32).contains(&table.len())
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !table_ok {
            self.invalid_at("nftables.table", &table);
        }
        let untrusted_limit = match raw.untrusted_limit {
            None => Some(default.untrusted_limit),
            Some(text) => {
                let limit = text.parse::<u32>().ok();
                if limit.is_none() {
                    self.invalid_at("nftables.untrusted_limit", &text);
                }
                limit
            }
        };
        let (enabled, untrusted_limit) = (enabled?, untrusted_limit?);
        table_ok.then_some(())?;
        Some(enabled.then_some(NftConfig {
            table,
            untrusted_limit,
        }))
    }

    /// `cluster`: `None` unless `cluster.redis.url` is set. The node name defaults to the host's.
    pub(super) fn cluster(&mut self, raw: RawCluster, dir: &Path) -> Option<Option<ClusterConfig>> {
        let redis = raw.redis.unwrap_or_default();
        let node = raw.node.unwrap_or_else(host_name);
        let key_prefix = raw
            .key_prefix
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        let printable = |text: &str| text.chars().all(|c| c.is_ascii_graphic());
        let mut ok = true;
        if let Some(url) = &redis.url {
            match redis::Client::open(url.as_str()) {
                Err(_) => {
                    self.invalid_at("cluster.redis.url", url);
                    ok = false;
                }
                Ok(client) => {
                    if let redis::ConnectionAddr::TcpTls { insecure: true, .. } =
                        client.get_connection_info().addr()
                    {
                        let key = self.key("cluster.redis.url");
                        self.problem(Problem {
                            message: "#insecure is refused: Redis's certificate is always \
                                      verified; name a private CA in cluster.redis.ca_file"
                                .to_owned(),
                            ..key.invalid(url, "")
                        });
                        ok = false;
                    }
                }
            }
        }
        let tls = self.cluster_tls(&redis, dir);
        if node.is_empty() || node.len() > 64 || !printable(&node) {
            self.invalid_at("cluster.node", &node);
            ok = false;
        }
        if key_prefix.len() > 64 || !printable(&key_prefix) {
            self.invalid_at("cluster.key_prefix", &key_prefix);
            ok = false;
        }
        let (ca_file, client_identity) = tls?;
        if !ok {
            return None;
        }
        let Some(redis_url) = redis.url else {
            return Some(None);
        };
        let config = ClusterConfig {
            redis_url,
            ca_file,
            client_identity,
            node,
            key_prefix,
        };
        // The files read and checked as each connection will, each named by its key.
        if let Err(error) = crate::cluster::client(&config) {
            let value = error.path().map_or_else(
                || crate::cluster::without_password(&config.redis_url).into_owned(),
                |p| p.display().to_string(),
            );
            let expected = match error {
                ClientError::Unreadable { .. } => format!("a readable file: {error}"),
                _ => format!("a usable PEM file: {error}"),
            };
            let key = self.key(error.key());
            self.problem(key.invalid(&value, expected));
            return None;
        }
        Some(Some(config))
    }

    /// `cluster.redis`'s TLS files, taken relative to `dir`: the CA file and the client
    /// certificate with its key, each only with a `rediss://` URL, the last two together.
    fn cluster_tls(
        &mut self,
        redis: &RawRedis,
        dir: &Path,
    ) -> Option<(Option<PathBuf>, Option<TlsFiles>)> {
        let before = self.problems.len();
        let tls = redis
            .url
            .as_deref()
            .is_some_and(|url| url.starts_with("rediss://"));
        let mut file = |path: &str, text: &Option<String>| -> Option<PathBuf> {
            let text = text.as_deref()?;
            let key = self.key(path);
            if text.trim().is_empty() {
                self.problem(key.invalid(text, expected_at(path).unwrap_or_default()));
                return None;
            }
            if !tls {
                let url = match &redis.url {
                    Some(url) => format!("cluster.redis.url {} is not a rediss:// URL", quote(url)),
                    None => "cluster.redis.url is not set".to_owned(),
                };
                self.problem(Problem {
                    message: format!("only for Redis over TLS, and {url}"),
                    ..key.invalid(text, "")
                });
                return None;
            }
            Some(dir.join(text))
        };
        let ca_file = file("cluster.redis.ca_file", &redis.ca_file);
        let client_cert = file("cluster.redis.client_cert", &redis.client_cert);
        let client_key = file("cluster.redis.client_key", &redis.client_key);
        let half = match (&redis.client_cert, &redis.client_key) {
            (Some(text), None) => Some(("cluster.redis.client_cert", text, "client_key")),
            (None, Some(text)) => Some(("cluster.redis.client_key", text, "client_cert")),
            _ => None,
        };
        if let Some((path, text, missing)) = half {
            let key = self.key(path);
            self.problem(Problem {
                message: format!(
                    "a client certificate needs both files, and cluster.redis.{missing} is not set"
                ),
                ..key.invalid(text, "")
            });
        }
        let client_identity = client_cert
            .zip(client_key)
            .map(|(certificate, key)| TlsFiles { certificate, key });
        (self.problems.len() == before).then_some((ca_file, client_identity))
    }

    fn invalid_at(&mut self, path: &str, text: &str) {
        let problem = self
            .key(path)
            .invalid(text, expected_at(path).unwrap_or_default());
        self.problem(problem);
    }
}

/// This host's name, the default node name; `sipguard` where the kernel does not say.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "sipguard".to_owned())
}

#[cfg(test)]
mod tests {
    use crate::config::{from_yaml, load, ClusterConfig, Config, NftConfig};
    use std::path::Path;

    /// A throwaway CA certificate (P-256, no key kept), only ever parsed.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBmDCCAT2gAwIBAgIUKR+ZoSGrD6Szu25swuNYPZuHxOAwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVc2lwZ3VhcmQtdW5pdC10ZXN0LWNhMCAXDTI2MTIwMjE1MDEw
NFoYDzIxMjYxMTA4MTUwMTA0WjAgMR4wHAYDVQQDDBVzaXBndWFyZC11bml0LXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQn43QD6HPH/AbKQK5n+dH+
XHWWyHSDkaAYj06nGfvaThKd4PdNUESQoSRpHKeBBbmqe4X/m8/OkHInjZYFE4Eh
o1MwUTAdBgNVHQ4EFgQU+uItvxtx3fRjpWJgFV4emQDJRIIwHwYDVR0jBBgwFoAU
+uItvxtx3fRjpWJgFV4emQDJRIIwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNJADBGAiEAgqW35i48tsC1qI7LOGfNu/j/YuqhwNAGLveuc2q6DHkCIQD+8Joj
cEKo0tFx1MqqidZvVjGxpGLtsR79Jr0Eii1iXw==
-----END CERTIFICATE-----
";

    /// The errors of `cluster` (YAML of its mapping) in `dir`/sipguard.yaml, or "" if it loads.
    fn cluster_errors(dir: &Path, cluster: &str) -> String {
        let file = dir.join("sipguard.yaml");
        std::fs::write(&file, format!("cluster: {cluster}\n")).unwrap();
        load(&file).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn both_are_off_by_default_and_on_when_asked() {
        let defaults = Config::default();
        assert_eq!((defaults.nftables, defaults.cluster), (None, None));
        let config = from_yaml(
            "nftables: {enabled: true}\ncluster: {redis: {url: \"redis://10.0.0.5:6379/0\"}, node: edge-1}\n",
            "t.yaml",
        )
        .unwrap();
        assert_eq!(
            config.nftables,
            Some(NftConfig {
                table: "sipguard".into(),
                untrusted_limit: 50_000,
            })
        );
        assert_eq!(
            config.cluster,
            Some(ClusterConfig {
                redis_url: "redis://10.0.0.5:6379/0".into(),
                ca_file: None,
                client_identity: None,
                node: "edge-1".into(),
                key_prefix: "sipguard:".into(),
            })
        );
        let shieldless =
            from_yaml("nftables: {enabled: true, untrusted_limit: 0}\n", "t.yaml").unwrap();
        assert_eq!(
            shieldless.nftables.map(|nft| nft.untrusted_limit),
            Some(0),
            "0 turns the shield off"
        );
    }

    #[test]
    fn every_bad_value_is_named_with_its_key() {
        let errors = from_yaml(
            "nftables: {enabled: yes, table: \"a b\", untrusted_limit: 1.5}\n\
             cluster: {redis: {url: \"http://x\"}, node: \"a b\", key_prefix: \"p q\"}\n",
            "t.yaml",
        )
        .unwrap_err()
        .to_string();
        for key in [
            "nftables.enabled: \"yes\"",
            "nftables.table: \"a b\"",
            "nftables.untrusted_limit: \"1.5\"",
            "cluster.redis.url: \"http://x\"",
            "cluster.node: \"a b\"",
            "cluster.key_prefix: \"p q\"",
        ] {
            assert!(errors.contains(key), "{key} missing from:\n{errors}");
        }
    }

    #[test]
    fn rediss_verifies_against_the_system_roots_or_a_ca_file_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("redis-ca.pem"), CA_PEM).unwrap();
        let file = dir.path().join("sipguard.yaml");
        std::fs::write(
            &file,
            "cluster: {redis: {url: \"rediss://10.0.0.5:6380/0\", ca_file: redis-ca.pem}}\n",
        )
        .unwrap();
        let cluster = load(&file).unwrap().cluster.unwrap();
        assert_eq!(cluster.ca_file, Some(dir.path().join("redis-ca.pem")));
        assert_eq!(cluster.client_identity, None);
        let system = from_yaml(
            "cluster: {redis: {url: \"rediss://10.0.0.5:6380/0\"}}\n",
            "t.yaml",
        )
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!((system.ca_file, system.client_identity), (None, None));
    }

    #[test]
    fn a_tls_file_that_is_missing_empty_half_or_without_rediss_is_named_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), CA_PEM).unwrap();
        std::fs::write(dir.path().join("empty.pem"), "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let tls = "url: \"rediss://127.0.0.1:6380\"";
        for (cluster, expected) in [
            (
                format!("{{redis: {{{tls}, ca_file: missing.pem}}}}"),
                format!(
                    "cluster.redis.ca_file: \"{}\": expected a readable file: cannot read {}: ",
                    missing.display(),
                    missing.display()
                ),
            ),
            (
                format!("{{redis: {{{tls}, ca_file: empty.pem}}}}"),
                format!(
                    "cluster.redis.ca_file: \"{0}\": expected a usable PEM file: no certificate in {0}",
                    dir.path().join("empty.pem").display()
                ),
            ),
            (
                "{redis: {url: \"redis://127.0.0.1:6379\", ca_file: ca.pem}}".to_owned(),
                "cluster.redis.ca_file: \"ca.pem\": only for Redis over TLS, and \
                 cluster.redis.url \"redis://127.0.0.1:6379\" is not a rediss:// URL"
                    .to_owned(),
            ),
            (
                "{node: edge-1, redis: {ca_file: ca.pem}}".to_owned(),
                "cluster.redis.ca_file: \"ca.pem\": only for Redis over TLS, and \
                 cluster.redis.url is not set"
                    .to_owned(),
            ),
            (
                format!("{{redis: {{{tls}, client_cert: ca.pem}}}}"),
                "cluster.redis.client_cert: \"ca.pem\": a client certificate needs both files, \
                 and cluster.redis.client_key is not set"
                    .to_owned(),
            ),
            (
                format!("{{redis: {{{tls}, client_cert: ca.pem, client_key: ca.pem}}}}"),
                format!(
                    "cluster.redis.client_key: \"{0}\": expected a usable PEM file: no private key in {0}",
                    dir.path().join("ca.pem").display()
                ),
            ),
            (
                "{redis: {url: \"rediss://127.0.0.1:6380/#insecure\"}}".to_owned(),
                "cluster.redis.url: \"rediss://127.0.0.1:6380/#insecure\": #insecure is refused"
                    .to_owned(),
            ),
        ] {
            let errors = cluster_errors(dir.path(), &cluster);
            assert!(errors.contains(&expected), "{cluster}:\n{errors}\nlacks\n{expected}");
        }
    }
}
