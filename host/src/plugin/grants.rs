//! Capabilities the operator grants one plugin, on top of a sandbox that
//! otherwise reaches nothing: outbound HTTP(S) to listed origins, outbound
//! TCP to listed addresses, and directories, read-only or read-write. A plugin without grants has none
//! (as every plugin before them), and one plugin's grants are built into
//! its own instances only.
//!
//! What WASI offers is narrowed, never widened: TCP may connect to a granted
//! address and do nothing else (no listening; the only bind allowed is the
//! implicit one a connect makes); names are looked up only when granted, and
//! what they resolve to is connectable only at their port
//! (`name_lookup.rs`); UDP stays off.
//! Directories are WASI preopens, so `..` and symlinks cannot leave them
//! (cap-std resolves every path beneath the granted directory).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// One plugin's grants, from its `[plugins.<name>]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    /// `allow_http`: origins it may send HTTP(S) requests to.
    /// Shared, not copied, by every instance's hooks and checks.
    pub http: Arc<[Origin]>,
    /// `allow_tcp`: addresses it may connect to.
    pub tcp: Arc<[SocketAddr]>,
    /// `allow_tcp`: names it may look up, and connect to at their port.
    pub tcp_names: Arc<[TcpName]>,
    /// `dirs` and `writable_dirs`.
    pub dirs: Vec<DirGrant>,
}

/// A host directory seen by the plugin at `guest` (say `/data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirGrant {
    pub guest: String,
    pub host: PathBuf,
    pub writable: bool,
}

/// One `allow_tcp` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpGrant {
    Address(SocketAddr),
    Name(TcpName),
}

/// A host name granted for TCP at one port (`broker.lan:1883`): the plugin
/// may look the name up, and connect to what it resolved to at that port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpName {
    /// Lowercase, without a trailing dot.
    pub name: String,
    pub port: u16,
}

impl std::str::FromStr for TcpGrant {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(addr) = text.parse() {
            return Ok(Self::Address(addr));
        }
        let malformed = || {
            format!(
                "{text:?} is not an address and port (\"127.0.0.1:1883\", \"[::1]:1883\") \
                 nor a host name and port (\"broker.lan:1883\")"
            )
        };
        let (name, port) = text.rsplit_once(':').ok_or_else(malformed)?;
        let port: u16 = port.parse().map_err(|_| malformed())?;
        let name = canonical_name(name);
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
        };
        if port == 0 || name.len() > 253 || !name.split('.').all(label_ok) {
            return Err(malformed());
        }
        Ok(Self::Name(TcpName { name, port }))
    }
}

/// A host name as grants compare it: lowercase, without a trailing dot.
fn canonical_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A capability a plugin used without a grant: counted, and logged at DEBUG
/// (a plugin probing in a loop must not flood the log).
#[derive(Clone)]
pub struct Denials {
    pub plugin: Arc<str>,
    pub tcp: metrics::Counter,
    pub http: metrics::Counter,
    /// Name lookups of names not granted.
    pub lookup: metrics::Counter,
}

/// An origin granted for HTTP: `http://127.0.0.1:8080`, or
/// `https://*.example.com` for every subdomain (not the domain itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    https: bool,
    /// Lowercase; a leading `*.` matches any subdomains.
    host: String,
    port: u16,
}

impl std::str::FromStr for Origin {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = text.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{text:?} must start with http:// or https://"));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "{text:?} must be an origin (scheme, host, optional port), not a URL with a path"
            ));
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, _)) if !host.ends_with(']') && host.contains(':') => {
                (authority, default_port)
            }
            Some((host, port)) => (
                host,
                port.parse()
                    .map_err(|_| format!("{text:?} has no valid port"))?,
            ),
            None => (authority, default_port),
        };
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl Origin {
    /// Whether `uri` is a request to this origin: scheme, host and port,
    /// compared before anything is resolved.
    fn admits(&self, uri: &http::Uri) -> bool {
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return false,
        };
        let Some(host) = uri.host().map(str::to_ascii_lowercase) else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let host_matches = match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        };
        https == self.https && port == self.port && host_matches
    }
}

/// The `wasi:http` hooks of one instance: requests to granted origins go
/// out through wasmtime's sender (async, HTTPS verified against webpki's
/// roots); any other fails in the plugin with `HTTP-request-denied`.
pub struct HttpHooks {
    origins: Arc<[Origin]>,
    denials: Denials,
}

type Sent = Box<
    dyn std::future::Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<wasmtime_wasi_http::WasiBody>,
                Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            )>,
        > + Send,
>;

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Sent {
        drop(fut);
        if !self
            .origins
            .iter()
            .any(|origin| origin.admits(request.uri()))
        {
            self.denials.http.increment(1);
            tracing::debug!(plugin = %self.denials.plugin, uri = %request.uri(), "capability denied: http");
            return Box::new(std::future::ready(Err(
                wasmtime_wasi_http::Error::HttpRequestDenied,
            )));
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn std::future::Future<Output = _> + Send>,
            ))
        })
    }
}

impl Grants {
    /// The `wasi:http` hooks of a new instance.
    pub fn http_hooks(&self, denials: &Denials) -> HttpHooks {
        HttpHooks {
            origins: self.http.clone(),
            denials: denials.clone(),
        }
    }

    /// Builds what is granted into a new instance's WASI context; returns
    /// the instance's name lookups, which widen its TCP grant by what its
    /// granted names resolve to.
    pub fn apply(&self, wasi: &mut WasiCtxBuilder, denials: &Denials) -> NameLookups {
        let lookups = NameLookups {
            names: self.tcp_names.clone(),
            open: HashMap::new(),
            resolved: Arc::default(),
            denials: denials.clone(),
        };
        wasi.allow_udp(false)
            .allow_ip_name_lookup(!self.tcp_names.is_empty());
        let allowed = self.tcp.clone();
        let resolved = lookups.resolved.clone();
        let counted = denials.clone();
        // TCP is on for every plugin, so that each denied connect is counted;
        // the check admits granted connects only.
        wasi.allow_tcp(true).socket_addr_check(move |addr, using| {
            let granted = match using {
                SocketAddrUse::TcpConnect => {
                    allowed.contains(&addr) || lock(&resolved).contains(&addr)
                }
                // The implicit bind of a connect: no address of its own.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            if !granted && !matches!(using, SocketAddrUse::TcpBind) {
                counted.tcp.increment(1);
                tracing::debug!(plugin = %counted.plugin, %addr, ?using, "capability denied: tcp");
            }
            Box::pin(std::future::ready(granted))
        });
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            // Checked at config load; a directory gone since is not granted.
            if let Err(err) = wasi.preopened_dir(&dir.host, &dir.guest, perms) {
                tracing::warn!(
                    plugin = %denials.plugin,
                    dir = %dir.host.display(),
                    "granted directory cannot be opened, the plugin goes without it: {err:#}"
                );
            }
        }
        lookups
    }
}

/// One instance's name lookups: which names it may resolve (`allow_tcp`
/// names), the lookups under way, and the addresses they resolved to, at
/// their granted ports, which its connects may reach. Kept per instance, so
/// a grant follows the plugin's own lookups, not whatever a name resolves
/// to later.
pub struct NameLookups {
    names: Arc<[TcpName]>,
    /// The granted ports of the name each open lookup (by its resource's
    /// handle) resolves.
    open: HashMap<u32, Vec<u16>>,
    resolved: Arc<Mutex<HashSet<SocketAddr>>>,
    denials: Denials,
}

fn lock(resolved: &Mutex<HashSet<SocketAddr>>) -> MutexGuard<'_, HashSet<SocketAddr>> {
    resolved.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Addresses one instance may learn through lookups: a plugin resolving
/// names in a loop cannot grow the host's memory without bound.
const MAX_RESOLVED: usize = 1024;

impl NameLookups {
    /// The ports `name` is granted at, or `None` (then the lookup is denied,
    /// counted and logged).
    pub fn ports(&self, name: &str) -> Option<Vec<u16>> {
        let name = canonical_name(name);
        let ports: Vec<u16> = self
            .names
            .iter()
            .filter(|granted| granted.name == name)
            .map(|granted| granted.port)
            .collect();
        if ports.is_empty() {
            self.denials.lookup.increment(1);
            tracing::debug!(plugin = %self.denials.plugin, %name, "capability denied: name lookup");
            return None;
        }
        Some(ports)
    }

    /// A lookup of a name granted at `ports` is under way as `lookup`.
    pub fn opened(&mut self, lookup: u32, ports: Vec<u16>) {
        self.open.insert(lookup, ports);
    }

    /// `lookup` yielded `ip`: connects to it at its name's ports are granted
    /// from now on.
    pub fn admit(&self, lookup: u32, ip: std::net::IpAddr) {
        let Some(ports) = self.open.get(&lookup) else {
            return;
        };
        let mut resolved = lock(&self.resolved);
        for &port in ports {
            if resolved.len() < MAX_RESOLVED {
                resolved.insert(SocketAddr::new(ip, port));
            }
        }
    }

    pub fn closed(&mut self, lookup: u32) {
        self.open.remove(&lookup);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admits(origin: &str, uri: &str) -> bool {
        origin
            .parse::<Origin>()
            .unwrap()
            .admits(&uri.parse().unwrap())
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        assert!(admits(
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/cm?x=1"
        ));
        assert!(!admits("http://127.0.0.1:8080", "https://127.0.0.1:8080/"));
        assert!(!admits("http://127.0.0.1:8080", "http://127.0.0.1:8081/"));
        assert!(admits(
            "https://Api.Example.com",
            "https://api.example.com:443/v1"
        ));
        assert!(!admits(
            "https://api.example.com",
            "https://api.example.com.evil.net/"
        ));
        assert!(admits("http://[::1]:8080", "http://[::1]:8080/"));
    }

    #[test]
    fn a_wildcard_matches_subdomains_only() {
        assert!(admits("https://*.example.com", "https://a.example.com/"));
        assert!(admits("https://*.example.com", "https://a.b.example.com/"));
        assert!(!admits("https://*.example.com", "https://example.com/"));
        assert!(!admits("https://*.example.com", "https://badexample.com/"));
    }

    #[test]
    fn tcp_grants_are_addresses_or_names_with_a_port() {
        let name = |name: &str, port| {
            TcpGrant::Name(TcpName {
                name: name.into(),
                port,
            })
        };
        assert_eq!(
            "[::1]:1883".parse(),
            Ok(TcpGrant::Address("[::1]:1883".parse().unwrap()))
        );
        assert_eq!("Broker.LAN.:1883".parse(), Ok(name("broker.lan", 1883)));
        assert_eq!("mqtt-1:8883".parse(), Ok(name("mqtt-1", 8883)));
        for bad in [
            "broker.lan",
            "broker.lan:0",
            "broker.lan:mqtt",
            "::1:1883",
            "*.lan:1883",
            "a..b:1",
            "-x:1",
            ":1883",
        ] {
            assert!(bad.parse::<TcpGrant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn what_is_not_an_origin_is_refused() {
        for bad in [
            "ftp://x",
            "example.com",
            "https://x.com/path",
            "http://x:port",
            "http://",
        ] {
            assert!(bad.parse::<Origin>().is_err(), "{bad}");
        }
    }
}
