//! Addresses of this host.

use std::net::{IpAddr, Ipv4Addr, UdpSocket};

/// The address other machines and pods reach this one at: the source address of the default
/// route (found without sending a packet), or loopback when there is none.
#[must_use]
pub fn primary_address() -> IpAddr {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|socket| {
            socket.connect((Ipv4Addr::new(192, 0, 2, 254), 9))?;
            socket.local_addr()
        })
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}
