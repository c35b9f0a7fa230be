//! Name lookups for names granted in `allow_tcp`, and nothing else.
//!
//! wasmtime's `wasi:sockets/ip-name-lookup` is all or nothing: a context
//! that allows lookups resolves any name, which would let a plugin granted
//! one broker probe the LAN's names (and leak data through DNS queries).
//! So the interface is the library's own, wrapped: a name not granted is
//! refused before anything is resolved (`access-denied`, counted as a
//! `lookup` denial); a granted one is resolved by the library, and each
//! address it yields becomes connectable at the name's granted ports for
//! this instance (see `grants.rs`).
//!
//! Linked over the WASI linker's version of the interface
//! ([`add_to_linker`]).

use wasmtime::component::{HasData, Linker, Resource};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{
    self, Host, HostResolveAddressStream, IpAddress, ResolveAddressStream,
};
use wasmtime_wasi::p2::bindings::sockets::network::{self, ErrorCode, Network};
use wasmtime_wasi::p2::{DynPollable, SocketError};
use wasmtime_wasi::sockets::WasiSocketsCtxView;

use super::grants::NameLookups;
use super::sandbox::Sandbox;

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
