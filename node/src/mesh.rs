//! The household mesh over libp2p: TCP, then the household's private-network key (a peer without
//! the household secret fails here, before any hearth protocol), then noise and yamux. Peers come
//! from mDNS and `--peer`. The mesh knows nothing of what peers say to each other: each protocol
//! (cards, jobs, ...) registers its name with [`Mesh::accept`] and opens streams with
//! [`Mesh::open`] or [`Mesh::ask`].

pub mod discovery;
pub mod peers;
pub mod wire;

use std::collections::HashSet;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identity::Keypair, noise, ping, tcp, yamux};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol, Swarm, Transport};
use libp2p_stream::IncomingStreams;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::household::Household;
use crate::metrics::Metrics;
use discovery::{Discovered, Discovery};
use peers::{PeerLink, PeerTable};
use wire::{read_frame, write_frame};

/// How often peers are pinged (for latency, and as a second check that they are alive; the card
/// poll drops a silent peer first, see `cards`).
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `--peer` addresses that are not connected are dialled again.
const REDIAL: Duration = Duration::from_secs(3);
/// Longest wait for a stream to open.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Refused connections are logged one per this interval, with a count of the others.
const REFUSALS_LOGGED_EVERY: Duration = Duration::from_secs(10);
/// Streams [`Mesh::ask`] opens before giving up on a first answer.
const ASK_ATTEMPTS: u32 = 5;

/// Mesh settings.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: Multiaddr,
    /// Peers to dial (and redial) by address.
    pub peers: Vec<Multiaddr>,
    /// Announce and browse over mDNS.
    pub mdns: bool,
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    ping: ping::Behaviour,
    streams: libp2p_stream::Behaviour,
}

enum Command {
    Block(PeerId),
    Disconnect(PeerId),
    Shutdown(oneshot::Sender<()>),
}

/// State shared between the swarm task and the handles.
struct Shared {
    peers: Mutex<PeerTable>,
    household: Mutex<Household>,
    listen: Mutex<Vec<Multiaddr>>,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Command>,
}

/// A handle on the running mesh.
#[derive(Clone)]
pub struct Mesh {
    me: PeerId,
    control: libp2p_stream::Control,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mesh({})", self.me)
    }
}

impl Mesh {
    /// Starts listening and discovery. Protocols are registered afterwards with [`Mesh::accept`].
    pub async fn start(
        key: Keypair,
        household: Household,
        config: MeshConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Mesh> {
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_other_transport(|key| {
                transport(key, household.secret.network_key())
                    .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            })
            .context("cannot set up the transport")?
            .with_behaviour(|_| Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(PING_INTERVAL)
                        .with_timeout(PING_TIMEOUT),
                ),
                streams: libp2p_stream::Behaviour::new(),
            })
            .context("cannot set up the mesh")?
            // Connections stay up while idle: peers need each other's cards and streams at once.
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(365 * 86400)))
            .build();
        for peer in &household.revoked {
            swarm.behaviour_mut().blocked.block_peer(*peer);
        }
        swarm
            .listen_on(config.listen.clone())
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let me = *swarm.local_peer_id();
        let control = swarm.behaviour().streams.new_control();
        let (commands, command_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            peers: Mutex::new(PeerTable::default()),
            household: Mutex::new(household),
            listen: Mutex::new(Vec::new()),
            metrics,
            commands,
        });
        tokio::spawn(run(swarm, config, command_rx, shared.clone()));
        Ok(Mesh {
            me,
            control,
            shared,
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// Addresses the node listens on, with its peer id.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen.lock().expect("listen lock").clone()
    }

    /// Connected peers, by peer id.
    pub fn peers(&self) -> Vec<PeerLink> {
        self.shared.peers.lock().expect("peers lock").links()
    }

    /// Peer ids the household has revoked.
    pub fn revoked(&self) -> Vec<PeerId> {
        let h = self.shared.household.lock().expect("household lock");
        h.revoked.iter().copied().collect()
    }

    /// The household's fingerprint and join code (the code holds the secret: show it only to
    /// whom the API already trusts).
    pub fn household(&self) -> (String, String) {
        let h = self.shared.household.lock().expect("household lock");
        (h.secret.fingerprint(), h.secret.join_code())
    }

    /// Revokes `peers` (saving them in the household file) and drops their connections; returns
    /// those that were not revoked before.
    pub async fn revoke(&self, peers: &[PeerId]) -> Result<Vec<PeerId>> {
        let added = {
            let mut h = self.shared.household.lock().expect("household lock");
            h.revoke(peers.iter().copied())?
        };
        for &id in &added {
            if id == self.me {
                tracing::error!(
                    "this device was removed from the household; it will not be served"
                );
            } else {
                tracing::warn!(peer = %id, "peer revoked from the household");
                let _ = self.shared.commands.send(Command::Block(id)).await;
            }
        }
        Ok(added)
    }

    /// Forgets `peer` now and closes its connections: it stopped answering.
    pub async fn drop_peer(&self, peer: PeerId) {
        self.shared.peers.lock().expect("peers lock").gone(&peer);
        let _ = self.shared.commands.send(Command::Disconnect(peer)).await;
    }

    /// Registers `protocol`: peers' streams for it arrive on the returned stream. Each protocol
    /// is registered once, by the module that serves it.
    pub fn accept(&self, protocol: &'static str) -> Result<IncomingStreams> {
        self.control
            .clone()
            .accept(StreamProtocol::new(protocol))
            .map_err(|_| anyhow::anyhow!("protocol {protocol} is registered twice"))
    }

    /// Opens a stream to `peer` for `protocol`, waiting at most 10 s.
    pub async fn open(&self, peer: PeerId, protocol: &'static str) -> io::Result<Stream> {
        let mut control = self.control.clone();
        match tokio::time::timeout(
            OPEN_TIMEOUT,
            control.open_stream(peer, StreamProtocol::new(protocol)),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(io::Error::other(format!(
                "cannot open a {protocol} stream: {e}"
            ))),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no {protocol} stream opened within {OPEN_TIMEOUT:?}"),
            )),
        }
    }

    /// Opens a stream for `protocol`, sends `request` and reads the first answer; the stream
    /// stays open for whatever follows. A stream that closes before any answer never reached
    /// the peer's server (libp2p-stream drops inbound streams that arrive while the server's
    /// accept channel is full), so another is opened, up to 5 in all: every request/answer
    /// protocol gets this care by asking through here.
    pub async fn ask<Q: Serialize, A: DeserializeOwned>(
        &self,
        peer: PeerId,
        protocol: &'static str,
        request: &Q,
    ) -> io::Result<(Stream, A)> {
        for attempt in 1..=ASK_ATTEMPTS {
            let mut stream = self.open(peer, protocol).await?;
            if write_frame(&mut stream, request).await.is_ok() {
                if let Ok(Some(first)) = read_frame::<_, A>(&mut stream).await {
                    return Ok((stream, first));
                }
            }
            tracing::debug!(%peer, attempt, protocol, "stream closed before an answer; opening another");
            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
        }
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the peer closed {ASK_ATTEMPTS} {protocol} streams before answering"),
        ))
    }

    /// Closes every connection and stops announcing this node.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .shared
            .commands
            .send(Command::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }
}

/// The household transport: TCP, then the private network keyed with `network_key` (a peer
/// without it fails here, before anything else), then noise and yamux.
pub fn transport(
    key: &Keypair,
    network_key: [u8; 32],
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let psk = PreSharedKey::new(network_key);
    Ok(
        tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .timeout(Duration::from_secs(10))
            .boxed(),
    )
}

fn without_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    config: MeshConfig,
    mut commands: mpsc::Receiver<Command>,
    shared: Arc<Shared>,
) {
    let me = *swarm.local_peer_id();
    let fingerprint = shared
        .household
        .lock()
        .expect("household lock")
        .secret
        .fingerprint();
    let (found_tx, mut found) = mpsc::channel(64);
    let mut discovery: Option<Discovery> = None;
    // `--peer` addresses, and the peer each turned out to be.
    let mut statics: Vec<(Multiaddr, Option<PeerId>)> = config
        .peers
        .iter()
        .map(|a| (without_p2p(a), None))
        .collect();
    let mut failed_once: HashSet<Multiaddr> = HashSet::new();
    let mut redial = tokio::time::interval(REDIAL);
    let mut refusals = crate::logs::Throttle::new(REFUSALS_LOGGED_EVERY);
    loop {
        tokio::select! {
            event = swarm.select_next_some() => match event {
                SwarmEvent::NewListenAddr { address, .. } => {
                    let full = address.clone().with(Protocol::P2p(me));
                    tracing::info!(addr = %full, "listening");
                    shared.listen.lock().expect("listen lock").push(full);
                    let port = address.iter().find_map(|p| match p {
                        Protocol::Tcp(port) => Some(port),
                        _ => None,
                    });
                    if let (true, None, Some(port)) = (config.mdns, &discovery, port) {
                        match Discovery::start(me, &fingerprint, port, found_tx.clone()) {
                            Ok(d) => discovery = Some(d),
                            Err(e) => tracing::warn!(error = %format!("{e:#}"), "mDNS discovery is off"),
                        }
                    }
                }
                SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                    let addr = endpoint.get_remote_address().clone();
                    if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                        let bare = without_p2p(address);
                        for (a, p) in statics.iter_mut().filter(|(a, _)| *a == bare) {
                            *p = Some(peer_id);
                            failed_once.remove(a);
                        }
                    }
                    let mut peers = shared.peers.lock().expect("peers lock");
                    if !peers.contains(&peer_id) {
                        tracing::info!(peer = %peer_id, %addr, "peer connected");
                    }
                    peers.connected(peer_id, addr);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, cause, .. } => {
                    shared.peers.lock().expect("peers lock").gone(&peer_id);
                    tracing::info!(peer = %peer_id, cause = ?cause.map(|c| c.to_string()), "peer gone");
                }
                SwarmEvent::IncomingConnectionError { send_back_addr, error, peer_id, .. } => {
                    Metrics::inc(&shared.metrics.refused_connections);
                    // A flood of junk connections is one line per interval, and a count.
                    if let Some(before) = refusals.allow(std::time::Instant::now()) {
                        tracing::warn!(
                            from = %send_back_addr,
                            peer = ?peer_id.map(|p| p.to_string()),
                            error = %error,
                            more_since_last_logged = before,
                            "refused a connection: the peer did not prove it holds this household's secret, or was revoked"
                        );
                    }
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    let first = statics.iter().any(|(a, p)| p.is_none() && failed_once.insert(a.clone()));
                    if first {
                        tracing::warn!(peer = ?peer_id.map(|p| p.to_string()), error = %error, "cannot reach a peer (is it up, and in this household?)");
                    } else {
                        tracing::debug!(peer = ?peer_id.map(|p| p.to_string()), error = %error, "dial failed");
                    }
                }
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, connection })) => match result {
                    Ok(rtt) => {
                        if let Some(p) = shared.peers.lock().expect("peers lock").get_mut(&peer) {
                            p.rtt = Some(rtt);
                        }
                    }
                    Err(ping::Failure::Unsupported) => {
                        tracing::debug!(%peer, "peer does not answer pings; latency unknown");
                    }
                    Err(e) => {
                        // Out of the table at once: closing a connection to a vanished host can
                        // wait on TCP retransmissions for minutes.
                        tracing::warn!(%peer, error = %e, "peer stopped answering; dropping it");
                        shared.peers.lock().expect("peers lock").gone(&peer);
                        swarm.close_connection(connection);
                    }
                },
                _ => {}
            },
            Some(command) = commands.recv() => match command {
                Command::Block(peer) => {
                    swarm.behaviour_mut().blocked.block_peer(peer);
                    shared.peers.lock().expect("peers lock").gone(&peer);
                }
                Command::Disconnect(peer) => {
                    let _ = swarm.disconnect_peer_id(peer);
                }
                Command::Shutdown(done) => {
                    if let Some(d) = discovery.take() {
                        tokio::task::spawn_blocking(move || d.stop()).await.ok();
                    }
                    let connected: Vec<PeerId> = swarm.connected_peers().copied().collect();
                    for p in connected {
                        let _ = swarm.disconnect_peer_id(p);
                    }
                    // Let the closing frames go out.
                    let deadline = tokio::time::sleep(Duration::from_millis(300));
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            _ = swarm.select_next_some() => {}
                        }
                    }
                    let _ = done.send(());
                    return;
                }
            },
            Some(d) = found.recv() => match d {
                Discovered::Found { peer, addrs } => {
                    if !swarm.is_connected(&peer) && !addrs.is_empty() {
                        tracing::debug!(%peer, "discovered over mDNS");
                        let opts = DialOpts::peer_id(peer)
                            .addresses(addrs)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        let _ = swarm.dial(opts);
                    }
                }
                Discovered::Gone { peer } => {
                    tracing::info!(%peer, "peer said goodbye over mDNS");
                    if swarm.is_connected(&peer) {
                        let _ = swarm.disconnect_peer_id(peer);
                    }
                }
            },
            _ = redial.tick() => {
                if let Some(count) = refusals.summary(std::time::Instant::now()) {
                    tracing::warn!(count, interval_s = REFUSALS_LOGGED_EVERY.as_secs(), "refused more connections (not logged one by one)");
                }
                for (addr, peer) in &statics {
                    if peer.is_none_or(|p| !swarm.is_connected(&p)) {
                        let _ = swarm.dial(addr.clone());
                    }
                }
            }
        }
    }
}
