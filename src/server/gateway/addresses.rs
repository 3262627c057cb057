//! Connections per client address, so that no one address can take the gateway's connection limit.
//! Trusted addresses (a reverse proxy in front, loopback) are not limited: behind a proxy every browser
//! comes from its address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts connections by address.
#[derive(Debug)]
pub struct Addresses {
    max_per_address: usize,
    trusted: Vec<IpAddr>,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; the count goes down when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Slot {
    _counted: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    addresses: Arc<Addresses>,
    ip: Option<IpAddr>,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        let Some(ip) = self.ip else { return };
        let mut open = self.addresses.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

impl Addresses {
    /// At most `max_per_address` connections from any address not in `trusted`.
    pub fn new(max_per_address: usize, trusted: Vec<IpAddr>) -> Arc<Self> {
        Arc::new(Self { max_per_address, trusted, open: Mutex::default() })
    }

    /// Counts a connection from `ip`, or `None` when that address has its fill.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let ip = ip.to_canonical();
        if self.trusted.contains(&ip) {
            return Some(Slot { _counted: Arc::new(SlotInner { addresses: Arc::clone(self), ip: None }) });
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_default();
        if *n >= self.max_per_address {
            return None;
        }
        *n += 1;
        Some(Slot { _counted: Arc::new(SlotInner { addresses: Arc::clone(self), ip: Some(ip) }) })
    }

    /// Whether `ip` is a trusted proxy (or loopback), whose `X-Forwarded-For` names the real client.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.contains(&ip.to_canonical())
    }

    /// The client a trusted proxy forwards for, from its `X-Forwarded-For` value: the nearest address that
    /// is not itself a trusted proxy, since every hop appends the one it heard from and only the trusted
    /// hops' words can be believed. `None` when the header names no address.
    pub fn forwarded_client(&self, forwarded_for: &str) -> Option<IpAddr> {
        let hops: Vec<IpAddr> = forwarded_for
            .split(',')
            .filter_map(|hop| {
                let hop = hop.trim();
                // `[v6]:port` and `v4:port` appear from some proxies.
                let bare = hop.strip_prefix('[').and_then(|h| h.split(']').next()).unwrap_or(hop);
                bare.parse::<IpAddr>().ok().or_else(|| bare.rsplit_once(':').and_then(|(a, _)| a.parse().ok()))
            })
            .map(|ip| ip.to_canonical())
            .collect();
        hops.iter().rev().find(|ip| !self.trusted.contains(ip)).or(hops.first()).copied()
    }

    /// Whether no limited address has a connection open.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_share_and_trusted_ones_are_not_counted() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let addresses = Addresses::new(2, vec![proxy]);
        let first = addresses.admit(a).unwrap();
        let second = first.clone();
        let third = addresses.admit(a).unwrap();
        assert!(addresses.admit(a).is_none(), "a third connection from one address");
        assert!(addresses.admit(b).is_some(), "another address is not affected");
        let proxied: Vec<_> = (0..10).map(|_| addresses.admit(proxy).unwrap()).collect();
        drop(first);
        assert!(addresses.admit(a).is_none(), "a clone keeps the slot");
        drop(second);
        assert!(addresses.admit(a).is_some(), "freed when the last clone goes");
        drop((third, proxied));
        assert!(addresses.is_empty());
        // An IPv4 client seen on an IPv6 socket counts as itself.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let _one = addresses.admit(mapped).unwrap();
        let _two = addresses.admit(a).unwrap();
        assert!(addresses.admit(a).is_none());
    }

    #[test]
    fn the_forwarded_client_is_the_nearest_untrusted_hop() {
        let addresses = Addresses::new(2, vec!["127.0.0.1".parse().unwrap(), "198.18.0.9".parse().unwrap()]);
        let cases = [
            ("198.51.100.7", Some("198.51.100.7")),
            // A client may send its own header: only what the trusted hops appended counts.
            ("6.6.6.6, 198.51.100.7", Some("198.51.100.7")),
            ("198.51.100.7, 198.18.0.9", Some("198.51.100.7")),
            (" 2001:db8::7 ", Some("2001:db8::7")),
            ("[2001:db8::7]:4711", Some("2001:db8::7")),
            ("198.51.100.7:4711", Some("198.51.100.7")),
            ("::ffff:198.51.100.7", Some("198.51.100.7")),
            // Only trusted hops: the first, the client as the first proxy heard it.
            ("127.0.0.1, 198.18.0.9", Some("127.0.0.1")),
            ("unknown", None),
            ("", None),
        ];
        for (header, expected) in cases {
            let expected = expected.map(|e| e.parse::<IpAddr>().unwrap());
            assert_eq!(addresses.forwarded_client(header), expected, "{header:?}");
        }
    }
}
