//! The `allow_tcp` grant: outbound TCP to listed addresses, and to names
//! at a port.
//!
//! What WASI offers is narrowed, never widened: TCP may connect to a granted
//! address and do nothing else (no listening; the only bind allowed is the
//! implicit one a connect makes); UDP stays off. Each denied connect is
//! counted (TCP is on for every plugin so that it can be).
//!
//! Names are looked up only when granted. wasmtime's
//! `wasi:sockets/ip-name-lookup` is all or nothing: a context that allows
//! lookups resolves any name, which would let a plugin granted one broker
//! probe the LAN's names (and leak data through DNS queries). So the
//! interface is the library's own, wrapped ([`add_to_linker`]): a name not
//! granted is refused before anything is resolved (`access-denied`, counted
//! as a `lookup` denial); a granted one is resolved by the library, and each
//! address it yields becomes connectable at the name's granted ports for
//! this instance ([`NameLookups`]).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, Host, HostResolveAddressStream, IpAddress, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, Network};
use wasmtime_wasi::p2::{DynPollable, SocketError};
use wasmtime_wasi::sockets::{SocketAddrUse, WasiSocketsCtxView};

use super::Denials;
use crate::plugin::sandbox::Sandbox;

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

/// Sets up TCP in a new instance's WASI context: connects to `addresses`,
/// and to what this instance's lookups of `names` resolve; returns those
/// lookups.
pub fn apply(
    addresses: &Arc<[SocketAddr]>,
    names: &Arc<[TcpName]>,
    wasi: &mut WasiCtxBuilder,
    denials: &Denials,
) -> NameLookups {
    let lookups = NameLookups {
        names: names.clone(),
        open: HashMap::new(),
        resolved: Arc::default(),
        denials: denials.clone(),
    };
    wasi.allow_udp(false)
        .allow_ip_name_lookup(!names.is_empty());
    let allowed = addresses.clone();
    let resolved = lookups.resolved.clone();
    let counted = denials.clone();
    // TCP is on for every plugin, so that each denied connect is counted;
    // the check admits granted connects only.
    wasi.allow_tcp(true).socket_addr_check(move |addr, using| {
        let granted = match using {
            SocketAddrUse::TcpConnect => allowed.contains(&addr) || lock(&resolved).contains(&addr),
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
    lookups
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
    fn ports(&self, name: &str) -> Option<Vec<u16>> {
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
    fn opened(&mut self, lookup: u32, ports: Vec<u16>) {
        self.open.insert(lookup, ports);
    }

    /// `lookup` yielded `ip`: connects to it at its name's ports are granted
    /// from now on.
    fn admit(&self, lookup: u32, ip: std::net::IpAddr) {
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

    fn closed(&mut self, lookup: u32) {
        self.open.remove(&lookup);
    }
}

/// The library's lookups, and this instance's grants over them.
pub struct Lookups<'a> {
    pub sockets: WasiSocketsCtxView<'a>,
    pub grants: &'a mut NameLookups,
}

struct GrantedLookups;

impl HasData for GrantedLookups {
    type Data<'a> = Lookups<'a>;
}

/// Replaces the linker's `wasi:sockets/ip-name-lookup` with this one.
pub fn add_to_linker(linker: &mut Linker<Sandbox>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    ip_name_lookup::add_to_linker::<Sandbox, GrantedLookups>(linker, Sandbox::lookups)?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The interface's error handling, as the library has it.
impl network::Host for Lookups<'_> {
    fn convert_error_code(&mut self, error: SocketError) -> wasmtime::Result<ErrorCode> {
        network::Host::convert_error_code(&mut self.sockets, error)
    }

    fn network_error_code(
        &mut self,
        err: Resource<network::Error>,
    ) -> wasmtime::Result<Option<ErrorCode>> {
        network::Host::network_error_code(&mut self.sockets, err)
    }
}

impl network::HostNetwork for Lookups<'_> {
    fn drop(&mut self, network: Resource<Network>) -> wasmtime::Result<()> {
        network::HostNetwork::drop(&mut self.sockets, network)
    }
}

impl Host for Lookups<'_> {
    fn resolve_addresses(
        &mut self,
        network: Resource<Network>,
        name: String,
    ) -> Result<Resource<ResolveAddressStream>, SocketError> {
        let Some(ports) = self.grants.ports(&name) else {
            return Err(ErrorCode::AccessDenied.into());
        };
        let stream = Host::resolve_addresses(&mut self.sockets, network, name)?;
        self.grants.opened(stream.rep(), ports);
        Ok(stream)
    }
}

impl HostResolveAddressStream for Lookups<'_> {
    fn resolve_next_address(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> Result<Option<IpAddress>, SocketError> {
        let lookup = stream.rep();
        let next = HostResolveAddressStream::resolve_next_address(&mut self.sockets, stream)?;
        if let Some(address) = &next {
            self.grants.admit(lookup, ip(address));
        }
        Ok(next)
    }

    fn subscribe(
        &mut self,
        stream: Resource<ResolveAddressStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        HostResolveAddressStream::subscribe(&mut self.sockets, stream)
    }

    fn drop(&mut self, stream: Resource<ResolveAddressStream>) -> wasmtime::Result<()> {
        self.grants.closed(stream.rep());
        HostResolveAddressStream::drop(&mut self.sockets, stream)
    }
}

fn ip(address: &IpAddress) -> std::net::IpAddr {
    match *address {
        IpAddress::Ipv4((a, b, c, d)) => std::net::Ipv4Addr::new(a, b, c, d).into(),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => {
            std::net::Ipv6Addr::new(a, b, c, d, e, f, g, h).into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
