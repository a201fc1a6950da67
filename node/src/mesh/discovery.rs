//! Discovery over DNS-SD/mDNS: this node announces `_hearth._tcp.local.` with a TXT record of
//! peer id, protocol version and household fingerprint (nothing else), and reports nodes of the
//! same household and version that appear or say goodbye.

use std::net::IpAddr;

use anyhow::{Context, Result};
use hearth_protocol::PROTOCOL_VERSION;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
use tokio::sync::mpsc;

/// The DNS-SD service type hearth nodes announce.
pub const SERVICE_TYPE: &str = "_hearth._tcp.local.";

/// A change seen on the LAN.
#[derive(Debug)]
pub enum Discovered {
    /// A node of this household, at these addresses.
    Found { peer: PeerId, addrs: Vec<Multiaddr> },
    /// A node said goodbye.
    Gone { peer: PeerId },
}

/// The running announcement and browser.
pub struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
}

impl Discovery {
    /// Announces this node on `port` and starts browsing; findings go to `found`.
    pub fn start(
        me: PeerId,
        fingerprint: &str,
        port: u16,
        found: mpsc::Sender<Discovered>,
    ) -> Result<Self> {
        let daemon = ServiceDaemon::new().context("cannot start mDNS")?;
        let id = me.to_string();
        let host = format!("hearth-{}.local.", id[id.len() - 12..].to_ascii_lowercase());
        let txt = [
            ("id", id.as_str()),
            ("v", &PROTOCOL_VERSION.to_string()),
            ("hh", fingerprint),
        ];
        let info = ServiceInfo::new(SERVICE_TYPE, &id, &host, "", port, &txt[..])
            .context("cannot build the mDNS announcement")?
            .enable_addr_auto();
        let fullname = info.get_fullname().to_owned();
        daemon
            .register(info)
            .context("cannot announce this node over mDNS")?;
        let events = daemon
            .browse(SERVICE_TYPE)
            .context("cannot browse for hearth nodes")?;
        let fingerprint = fingerprint.to_owned();
        std::thread::Builder::new()
            .name("hearth-mdns".into())
            .spawn(move || {
                // Ends when the daemon shuts down and closes the channel.
                while let Ok(event) = events.recv() {
                    if let Some(d) = interpret(event, me, &fingerprint) {
                        if found.blocking_send(d).is_err() {
                            break;
                        }
                    }
                }
            })
            .context("cannot start the mDNS thread")?;
        Ok(Discovery { daemon, fullname })
    }

    /// Says goodbye on the LAN and stops.
    pub fn stop(self) {
        if let Ok(done) = self.daemon.unregister(&self.fullname) {
            let _ = done.recv_timeout(std::time::Duration::from_secs(1));
        }
        let _ = self.daemon.shutdown();
    }
}

fn interpret(event: ServiceEvent, me: PeerId, fingerprint: &str) -> Option<Discovered> {
    match event {
        ServiceEvent::ServiceResolved(info) => {
            let peer: PeerId = info.get_property_val_str("id")?.parse().ok()?;
            if peer == me {
                return None;
            }
            let version = info.get_property_val_str("v");
            let household = info.get_property_val_str("hh");
            if household != Some(fingerprint) {
                tracing::debug!(%peer, "ignoring a hearth node of another household");
                return None;
            }
            if version != Some(PROTOCOL_VERSION.to_string().as_str()) {
                tracing::warn!(%peer, version = ?version, "ignoring a node speaking another protocol version");
                return None;
            }
            let addrs = info
                .addresses
                .iter()
                .map(|a| a.to_ip_addr())
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| {
                    let proto = match ip {
                        IpAddr::V4(v4) => Protocol::Ip4(v4),
                        IpAddr::V6(v6) => Protocol::Ip6(v6),
                    };
                    Multiaddr::empty()
                        .with(proto)
                        .with(Protocol::Tcp(info.port))
                        .with(Protocol::P2p(peer))
                })
                .collect();
            Some(Discovered::Found { peer, addrs })
        }
        ServiceEvent::ServiceRemoved(_, fullname) => {
            let instance = fullname.strip_suffix(&format!(".{SERVICE_TYPE}"))?;
            Some(Discovered::Gone {
                peer: instance.parse().ok()?,
            })
        }
        _ => None,
    }
}
