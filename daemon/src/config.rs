//! Where the daemon keeps its data, where it listens, and whom it asks first.
//!
//! Every setting comes, in order of precedence, from a command-line flag, an environment
//! variable, the config file (`~/.config/sotto/config.toml`, or `--config`), or a default
//! under the XDG directories, so that several nodes can run side by side.

use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde::Deserialize;

/// The default TCP and UDP (QUIC) port.
pub const DEFAULT_PORT: u16 = 4690;

/// What a node needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses printed in the contact card instead of the listen addresses.
    pub announce: Vec<Multiaddr>,
    pub mailbox: Mailbox,
    /// What the simulator changes (transport, link delays, an observer); the default for a
    /// daemon.
    pub harness: crate::link::Harness,
    /// Rate limits, bans and connection limits (see docs/robustness.md).
    pub limits: crate::limits::Limits,
    /// When the account's keys change.
    pub keys: Keys,
}

/// When the account's keys change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    /// How often the fallback key printed in the card is replaced. The one it replaces keeps
    /// working until the next rotation, so a card is good for first contact for at least
    /// this long, and a pre-key message on a fallback key opens for at most twice this.
    pub fallback_rotation_ms: u64,
    /// How long each admin but the first waits, per admin before it, to rekey a group whose
    /// secret a member who left still holds (the first rekeys at once; see
    /// `sotto_protocol::group::State::rekey_rank`).
    pub group_rekey_grace_ms: u64,
    /// The largest sender-key bundle left at a group's own dead drop; a larger one is split
    /// among the key dead drops (`sotto_protocol::group::SenderKeys::placed`).
    pub group_shared_bundle_bytes: usize,
}

/// The default fallback-key rotation period: 30 days.
pub const DEFAULT_FALLBACK_ROTATION_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// The default turn of each further admin to rekey after a leave: 10 minutes.
pub const DEFAULT_GROUP_REKEY_GRACE_MS: u64 = 10 * 60 * 1000;

impl Default for Keys {
    fn default() -> Self {
        Keys {
            fallback_rotation_ms: DEFAULT_FALLBACK_ROTATION_MS,
            group_rekey_grace_ms: DEFAULT_GROUP_REKEY_GRACE_MS,
            group_shared_bundle_bytes: sotto_protocol::group::MAX_SHARED_BUNDLE_BYTES,
        }
    }
}

/// Store-and-forward settings.
#[derive(Clone, Debug)]
pub struct Mailbox {
    /// How long a dead-drop address lasts.
    pub epoch_ms: u64,
    /// Epochs are counted from this instant (ms since the Unix epoch). Every node must use
    /// the same origin; daemons use 0, the simulator its own start.
    pub epoch_origin_ms: u64,
    /// How often the node fetches its dead drops (also on start and on connecting).
    pub fetch_interval_ms: u64,
    /// How many hosts each envelope is deposited at.
    pub replicas: usize,
    /// Never send directly to a contact's node; always through mailboxes, and never tell
    /// contacts this node's addresses.
    pub mailbox_only: bool,
    /// Print this node's PeerId and addresses in the contact card.
    pub publish_address: bool,
    /// Do this node's own mailbox work (lookups, deposits, fetches, deletes) through
    /// private paths, so that no host sees its PeerId.
    pub private_paths: bool,
    /// The limits this node applies as a host (TTL, quotas, proof-of-work difficulty).
    pub policy: sotto_protocol::mailbox::Policy,
    /// Whose invitation to a group joins this node at once (the rest wait for `group join`).
    pub groups_from: GroupsFrom,
    /// Send read receipts (`chat.read`) and take contacts' (off: neither).
    pub read_receipts: bool,
    /// Attachments up to this size are downloaded when their message arrives; larger ones
    /// wait for `attachment.get`.
    pub auto_download_bytes: u64,
    /// The largest file this node sends or downloads (at most
    /// [`sotto_protocol::blob::MAX_BLOB_BYTES`]).
    pub max_attachment_bytes: u64,
}

/// The default of [`Mailbox::auto_download_bytes`]: 16 MiB.
pub const AUTO_DOWNLOAD_BYTES: u64 = 16 << 20;
/// The default of [`Mailbox::max_attachment_bytes`]: 100 MiB.
pub const MAX_ATTACHMENT_BYTES: u64 = 100 << 20;

/// Whose invitation to a group joins the node at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GroupsFrom {
    /// An admin who is a contact (not a message request).
    #[default]
    Contacts,
    /// Nobody: every invitation waits.
    Nobody,
    /// Anyone, a stranger too.
    Everyone,
}

impl Default for Mailbox {
    fn default() -> Self {
        Mailbox {
            epoch_ms: sotto_protocol::deaddrop::DEFAULT_EPOCH_MS,
            epoch_origin_ms: 0,
            fetch_interval_ms: 60_000,
            replicas: 3,
            mailbox_only: false,
            publish_address: false,
            private_paths: true,
            policy: sotto_protocol::mailbox::Policy::default(),
            groups_from: GroupsFrom::default(),
            read_receipts: true,
            auto_download_bytes: AUTO_DOWNLOAD_BYTES,
            max_attachment_bytes: MAX_ATTACHMENT_BYTES,
        }
    }
}

/// The config file's keys; all optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub announce: Option<Vec<String>>,
    pub epoch_secs: Option<u64>,
    pub fetch_interval_secs: Option<u64>,
    pub replicas: Option<usize>,
    pub mailbox_only: Option<bool>,
    pub publish_address: Option<bool>,
    pub private_paths: Option<bool>,
    pub relay: Option<bool>,
    pub rate_onion: Option<u32>,
    pub stamp_difficulty: Option<u8>,
    pub groups_from: Option<GroupsFrom>,
    pub read_receipts: Option<bool>,
    pub auto_download_bytes: Option<u64>,
    pub max_attachment_bytes: Option<u64>,
    pub mailbox_ttl_secs: Option<u64>,
    pub rate_envelope: Option<u32>,
    pub rate_contact_envelope: Option<u32>,
    pub rate_deposit: Option<u32>,
    pub rate_fetch: Option<u32>,
    pub rate_dht: Option<u32>,
    pub ban_after: Option<u32>,
    pub ban_secs: Option<u64>,
    pub max_connections: Option<u32>,
    pub max_connections_per_peer: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub fallback_rotation_secs: Option<u64>,
    pub group_rekey_grace_secs: Option<u64>,
    pub group_shared_bundle_bytes: Option<u32>,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{what}: {value:?} is not a multiaddress ({message})")]
    BadAddr {
        what: &'static str,
        value: String,
        message: String,
    },
    #[error("no home directory found; set --data-dir and --socket")]
    NoHome,
    #[error("{key} = {value} is out of range ({range})")]
    OutOfRange {
        key: &'static str,
        value: String,
        range: &'static str,
    },
}

/// Seconds to milliseconds, refusing zero.
pub fn positive_secs(key: &'static str, secs: u64) -> Result<u64, ConfigError> {
    if secs == 0 {
        return Err(ConfigError::OutOfRange {
            key,
            value: "0".into(),
            range: "at least 1 second",
        });
    }
    Ok(secs.saturating_mul(1000))
}

impl File {
    /// Read the config file at `path`. A missing file is an empty config unless `required`.
    pub fn load(path: &Path, required: bool) -> Result<File, ConfigError> {
        match read_bounded(path) {
            Ok(text) => File::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_owned(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(File::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }
}

/// The longest config file read; a longer one is refused, not read into memory.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024;

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("longer than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok(text)
}

impl File {
    /// Parse the text of a config file; the error names the key or line at fault.
    pub fn parse(text: &str) -> Result<File, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

/// The default config file path: `$XDG_CONFIG_HOME/sotto/config.toml`.
pub fn default_config_file() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "sotto").map(|d| d.config_dir().join("config.toml"))
}

/// The default data directory: `$XDG_DATA_HOME/sotto`.
pub fn default_data_dir() -> Option<PathBuf> {
    directories::ProjectDirs::from("", "", "sotto").map(|d| d.data_dir().to_owned())
}

/// The default control socket: `$XDG_RUNTIME_DIR/sotto/sottod.sock`, or
/// `/tmp/sotto-$UID/sottod.sock` where there is no runtime directory.
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("sotto").join("sottod.sock"),
        None => {
            let uid = current_uid();
            PathBuf::from(format!("/tmp/sotto-{uid}")).join("sottod.sock")
        }
    }
}

/// The uid of this process, read without unsafe code: `/proc/self` is owned by it.
pub fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

/// The default listen addresses: TCP and QUIC on all interfaces, port [`DEFAULT_PORT`].
pub fn default_listen() -> Vec<Multiaddr> {
    [
        format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}"),
        format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1"),
    ]
    .iter()
    .filter_map(|a| a.parse().ok())
    .collect()
}

/// Parse multiaddresses, naming the setting on error.
pub fn parse_addrs(what: &'static str, values: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|e: libp2p::multiaddr::Error| ConfigError::BadAddr {
                    what,
                    value: v.to_owned(),
                    message: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "data_dir = \"/x\"\nlisten_on = []\n").unwrap();
        let err = File::load(&path, true).unwrap_err().to_string();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn missing_file_is_empty_unless_required() {
        let path = Path::new("/nonexistent/sotto.toml");
        assert!(File::load(path, false).unwrap().data_dir.is_none());
        assert!(File::load(path, true).is_err());
    }

    #[test]
    fn addresses_parse_with_commas_and_name_the_setting() {
        let a = parse_addrs(
            "listen",
            &["/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/udp/2/quic-v1".into()],
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        let e = parse_addrs("bootstrap", &["nonsense".into()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bootstrap"), "{e}");
    }
}
