//! Connections per client address: one address, holding every connection
//! it can (idle or mid-message), must not keep clients from other addresses
//! out. `max_connections_per_ip` is a share of `max_connections` by
//! default, so that no single address can take every place.
//!
//! Addresses are counted as the kernel reports them, IPv4-mapped IPv6
//! addresses as the IPv4 address they are. Clients behind one NAT share an
//! address, and so a share: raise the limit for such a network.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts connections per address against one limit.
pub struct PerAddress {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its address's count, given back on drop.
pub struct AddressPermit {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, unless it holds `max`.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<AddressPermit> {
        let ip = ip.to_canonical();
        let mut held = self.lock();
        let count = held.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            owner: self.clone(),
            ip,
        })
    }

    /// A panic elsewhere while holding the lock leaves the counts intact:
    /// each change is a single add or remove.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let mut held = self.owner.lock();
        if let Some(count) = held.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_own_share() {
        let limit = PerAddress::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(limit.try_acquire(a).is_none());
        assert!(limit.try_acquire(b).is_some());
        drop(first);
        assert!(limit.try_acquire(a).is_some());
    }

    #[test]
    fn mapped_ipv6_counts_as_its_ipv4_address() {
        let limit = PerAddress::new(1);
        let _v4 = limit.try_acquire("10.0.0.1".parse().unwrap()).unwrap();
        assert!(
            limit
                .try_acquire("::ffff:10.0.0.1".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn released_addresses_are_forgotten() {
        let limit = PerAddress::new(1);
        drop(limit.try_acquire("10.0.0.1".parse().unwrap()));
        assert!(limit.lock().is_empty());
    }
}
