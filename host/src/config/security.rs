//! The security tables: `[[auth.tokens]]` (who may connect and run what)
//! and `[tls]` (the listener's certificate).

use std::path::{Path, PathBuf};

use anyhow::ensure;
use serde::Deserialize;

/// The `[tls]` table: PEM files, relative to the config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate issued by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

/// The `[auth]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// `[[auth.tokens]]`: with any, every connection must authenticate first.
    pub tokens: Vec<TokenSettings>,
    /// How long a connection may stay unauthenticated, from connect, in
    /// milliseconds; 0: as long as `idle_timeout_ms`.
    pub timeout_ms: u64,
    /// The share of `max_connections` that connections not yet
    /// authenticated may hold together; past it a newcomer displaces the
    /// oldest, so silent connections can never keep a token holder out.
    pub max_unauthenticated_percent: u8,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            timeout_ms: 5_000,
            max_unauthenticated_percent: 50,
        }
    }
}

/// One `[[auth.tokens]]` entry. The token itself is never in the config:
/// only its SHA-256, so that a leaked config leaks no credential.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// Who holds it, for the log and metrics (never the token).
    pub name: String,
    /// The token's SHA-256, 64 lowercase hex digits (`plugboard token` makes both).
    pub sha256: String,
    /// The commands it may run; `"*"` is every command.
    pub commands: Vec<String>,
}

impl AuthSettings {
    /// How many connections may wait to authenticate at once, of
    /// `max_connections`: at least one.
    pub fn max_unauthenticated(&self, max_connections: usize) -> usize {
        (max_connections * usize::from(self.max_unauthenticated_percent) / 100).max(1)
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            (1..=100).contains(&self.max_unauthenticated_percent),
            "`auth.max_unauthenticated_percent` must be between 1 and 100, not {}",
            self.max_unauthenticated_percent
        );
        let mut names = std::collections::BTreeSet::new();
        for (index, token) in self.tokens.iter().enumerate() {
            let at = format!("`auth.tokens[{index}]`");
            ensure!(
                !token.name.trim().is_empty(),
                "{at}: `name` must not be empty"
            );
            ensure!(
                names.insert(token.name.as_str()),
                "{at}: the name {:?} is used twice",
                token.name
            );
            let hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
            ensure!(
                token.sha256.len() == 64 && token.sha256.chars().all(hex),
                "{at} ({:?}): `sha256` must be 64 lowercase hex digits (`plugboard token` prints one)",
                token.name
            );
            ensure!(
                !token.commands.is_empty(),
                "{at} ({:?}): `commands` must list at least one command, or \"*\"",
                token.name
            );
        }
        Ok(())
    }
}

impl TlsSettings {
    /// Makes the PEM paths absolute, relative to `base`.
    pub(super) fn resolve_paths(&mut self, base: &Path) {
        for file in [&mut self.cert, &mut self.key] {
            *file = base.join(&*file);
        }
        if let Some(ca) = &mut self.client_ca {
            *ca = base.join(&*ca);
        }
    }
}
