//! The `nftables` and `cluster` sections: where bans go beyond this process (the kernel's
//! nftables, the other nodes through Redis). Both are off unless the file turns them on.

use super::{expected_at, Validator};
use crate::config::raw::{RawCluster, RawNftables};
use crate::config::{ClusterConfig, NftConfig};

const DEFAULT_TABLE: &str = "sipguard";
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
        let table = raw.table.unwrap_or_else(|| DEFAULT_TABLE.to_owned());
        let table_ok = (1..=32).contains(&table.len())
            && table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !table_ok {
            self.invalid_at("nftables.table", &table);
            return None;
        }
        Some(enabled?.then_some(NftConfig { table }))
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
