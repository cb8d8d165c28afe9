//! The tunnels file: every tunnel the edge serves (id, account tag, secret, hostnames), and
//! `burrow edge tunnel create`. Secrets on disk are the owner's only.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use burrow_core::edge::auth::TunnelAuth;
use burrow_core::edge::hostnames::HostnameTable;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use burrow_core::settings::Credentials;

/// One tunnel the edge knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TunnelEntry {
    /// Name.
    pub name: String,
    /// UUID.
    pub id: Uuid,
    /// Account tag.
    pub account_tag: String,
    /// Secret, base64.
    pub secret: String,
    /// Hostnames routed to it.
    #[serde(default)]
    pub hostnames: Vec<String>,
}

/// The tunnels file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TunnelsFile {
    /// Every tunnel.
    pub tunnels: Vec<TunnelEntry>,
}

impl TunnelsFile {
    /// Reads it; a missing file is empty.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn save(&self, path: &Path) -> Result<(), String> {
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        write_private(path, text.as_bytes())
    }

    /// Every tunnel's hostnames, indexed; a hostname claimed twice or malformed is an error.
    pub(super) fn hostnames(&self) -> Result<HostnameTable, String> {
        let mut table = HostnameTable::new();
        for t in &self.tunnels {
            for h in &t.hostnames {
                table
                    .insert(h, t.id)
                    .map_err(|e| format!("tunnel {}: {e}", t.name))?;
            }
        }
        Ok(table)
    }

    /// Every tunnel's credentials; a secret that is not base64 is an error.
    pub(super) fn auth(&self) -> Result<TunnelAuth, String> {
        let mut auth = TunnelAuth::new();
        for t in &self.tunnels {
            let secret = STANDARD
                .decode(&t.secret)
                .map_err(|e| format!("tunnel {}: secret: {e}", t.name))?;
            auth.insert(t.id, &t.account_tag, secret);
        }
        Ok(auth)
    }

    /// A tunnel by name or id.
    pub(crate) fn by_name_or_id(&self, s: &str) -> Option<Uuid> {
        self.tunnels
            .iter()
            .find(|t| t.name == s || t.id.to_string() == s)
            .map(|t| t.id)
    }
}

/// Creates the state directory (and missing parents) owner-only: it holds every tunnel's
/// secret and the edge's private key.
pub(super) fn create_state_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes a secret file owner-only (0600), atomically: a temporary file in the same directory,
/// synced, then renamed over `path`, so neither a reader nor a crash ever sees it half written
/// or with wider permissions.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(name);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            // A leftover temporary file from a crash may have been created wider.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(bytes)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path, e));
    }
    Ok(())
}

/// Creates a tunnel: fresh UUID and 32-byte secret.
pub fn create_tunnel(
    tunnels_path: &Path,
    name: &str,
    hostnames: Vec<String>,
) -> Result<(TunnelEntry, Credentials), String> {
    let mut file = TunnelsFile::load(tunnels_path)?;
    if file.tunnels.iter().any(|t| t.name == name) {
        return Err(format!("tunnel with name {name} already exists"));
    }
    let mut table = file.hostnames()?;
    let id = Uuid::new_v4();
    for h in &hostnames {
        table.insert(h, id).map_err(|e| e.to_string())?;
    }
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let mut account = [0u8; 16];
    getrandom::fill(&mut account).map_err(|e| e.to_string())?;
    let entry = TunnelEntry {
        name: name.into(),
        id,
        account_tag: hex::encode(account),
        secret: STANDARD.encode(&secret),
        hostnames,
    };
    file.tunnels.push(entry.clone());
    file.save(tunnels_path)?;
    let creds = Credentials {
        account_tag: entry.account_tag.clone(),
        secret,
        tunnel_id: entry.id,
        endpoint: String::new(),
    };
    Ok((entry, creds))
}
