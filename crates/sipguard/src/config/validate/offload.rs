//! The `nftables` and `cluster` sections: where bans go beyond this process (the kernel's
//! nftables, the other nodes through Redis). Both are off unless the file turns them on.

use super::{expected_at, Validator};
use crate::config::raw::{RawCluster, RawNftables};
use crate::config::{ClusterConfig, NftConfig};

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
    pub(super) fn cluster(&mut self, raw: RawCluster) -> Option<Option<ClusterConfig>> {
        let url = raw.redis.and_then(|redis| redis.url);
        let node = raw.node.unwrap_or_else(host_name);
        let key_prefix = raw
            .key_prefix
            .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_owned());
        let printable = |text: &str| text.chars().all(|c| c.is_ascii_graphic());
        let mut ok = true;
        if let Some(url) = &url {
            if redis::Client::open(url.as_str()).is_err() {
                self.invalid_at("cluster.redis.url", url);
                ok = false;
            }
        }
        if node.is_empty() || node.len() > 64 || !printable(&node) {
            self.invalid_at("cluster.node", &node);
            ok = false;
        }
        if key_prefix.len() > 64 || !printable(&key_prefix) {
            self.invalid_at("cluster.key_prefix", &key_prefix);
            ok = false;
        }
        ok.then(|| {
            url.map(|redis_url| ClusterConfig {
                redis_url,
                node,
                key_prefix,
            })
        })
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
    use crate::config::{from_yaml, ClusterConfig, Config, NftConfig};

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
}
