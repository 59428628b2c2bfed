//! The session file: the established UDP sessions (client, the sipguard address it sent to, its
//! upstream address), kept beside the ban journal so that a restart, even after a crash,
//! rebinds each client's upstream port and the contacts the PBX holds stay valid. Rewritten
//! whole (to a temporary file, then renamed) whenever the set changes; a line that cannot be
//! read is skipped with a warning, so a damaged file costs those sessions, never the start.

use sipguard_relay::{Binding, SessionStore, Transport};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The name of the session file, in the journal's directory.
const FILE_NAME: &str = "sessions";

/// Established UDP sessions on disk.
#[derive(Debug)]
pub struct SessionFile {
    path: PathBuf,
}

impl SessionFile {
    /// The session file beside the ban journal at `journal`.
    pub fn beside(journal: &Path) -> Self {
        let dir = journal.parent().unwrap_or(Path::new("."));
        SessionFile {
            path: dir.join(FILE_NAME),
        }
    }
}

impl SessionStore for SessionFile {
    fn load(&self) -> Vec<Binding> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(error) => {
                tracing::warn!(path = %self.path.display(), %error, "saved sessions not read");
                return Vec::new();
            }
        };
        let mut bindings = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line) {
                Some(binding) => bindings.push(binding),
                None => {
                    let line = number + 1;
                    tracing::warn!(path = %self.path.display(), line, "damaged saved session skipped");
                }
            }
        }
        bindings
    }

    fn save(&self, bindings: &[Binding]) -> io::Result<()> {
        let mut text =
            String::from("# sipguard's established UDP sessions: client local upstream\n");
        for binding in bindings.iter().filter(|b| b.transport == Transport::Udp) {
            text.push_str(&format!(
                "{} {} {}\n",
                binding.client, binding.local, binding.upstream
            ));
        }
        let temporary = self.path.with_extension("new");
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        drop(file);
        std::fs::rename(&temporary, &self.path)
    }
}

fn parse_line(line: &str) -> Option<Binding> {
    let mut fields = line.split_ascii_whitespace().map(str::parse::<SocketAddr>);
    let (client, local, upstream) = (fields.next()?, fields.next()?, fields.next()?);
    if fields.next().is_some() {
        return None;
    }
    Some(Binding {
        transport: Transport::Udp,
        client: client.ok()?,
        local: local.ok()?,
        upstream: upstream.ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(client: &str, upstream: &str) -> Binding {
        Binding {
            transport: Transport::Udp,
            client: client.parse().unwrap(),
            local: "0.0.0.0:5060".parse().unwrap(),
            upstream: upstream.parse().unwrap(),
        }
    }

    #[test]
    fn saved_sessions_load_back_and_damaged_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = SessionFile::beside(&dir.path().join("bans.journal"));
        assert_eq!(file.load(), []);
        let saved = [
            binding("203.0.113.7:5060", "127.0.0.1:40001"),
            binding("[2001:db8::7]:5062", "127.0.1.1:40002"),
        ];
        file.save(&saved).unwrap();
        assert_eq!(file.load(), saved);

        let path = dir.path().join(FILE_NAME);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("203.0.113.8:5060 garbage\n198.51.100.1:5060 0.0.0.0:5060 127.0.0.1:1 x\n");
        std::fs::write(&path, text).unwrap();
        assert_eq!(file.load(), saved);
    }

    #[test]
    fn only_udp_bindings_are_saved() {
        let dir = tempfile::tempdir().unwrap();
        let file = SessionFile::beside(&dir.path().join("bans.journal"));
        let tcp = Binding {
            transport: Transport::Tcp,
            ..binding("203.0.113.9:5060", "127.0.0.1:40003")
        };
        file.save(&[tcp]).unwrap();
        assert_eq!(file.load(), []);
    }
}
