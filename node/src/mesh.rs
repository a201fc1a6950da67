//! The household mesh over libp2p: TCP, then the household's private-network key (a peer without
//! the household secret fails here, before any hearth protocol), then noise and yamux. Peers come
//! from mDNS and `--peer`; capability cards and jobs travel on their own stream protocols.

mod cards;
pub mod discovery;
mod jobs;
pub mod peers;
mod wire;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use hearth_protocol::{Card, JobEvent, JobRequest, CARD_PROTOCOL, JOB_PROTOCOL};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{allow_block_list, identity::Keypair, noise, ping, tcp, yamux};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, Transport};
use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;
use crate::household::Household;
use crate::metrics::Metrics;
use discovery::{Discovered, Discovery};
use peers::{PeerTable, PeerView};

/// How often peers are pinged (for latency, and as a second check that they are alive; the card
/// poll drops a silent peer first, see `cards`).
const PING_INTERVAL: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `--peer` addresses that are not connected are dialled again.
const REDIAL: Duration = Duration::from_secs(3);

/// Mesh settings.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    pub listen: Multiaddr,
    /// Peers to dial (and redial) by address.
    pub peers: Vec<Multiaddr>,
    /// Announce and browse over mDNS.
    pub mdns: bool,
}

/// Builds this node's card on demand.
pub type CardSource = Arc<dyn Fn(&Mesh) -> Card + Send + Sync>;

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
    /// Starts listening, discovery and the card and job protocols.
    pub async fn start(
        key: Keypair,
        household: Household,
        config: MeshConfig,
        card: CardSource,
        engine: Arc<Engine>,
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
            if let Ok(id) = peer.parse() {
                swarm.behaviour_mut().blocked.block_peer(id);
            }
        }
        swarm
            .listen_on(config.listen.clone())
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let me = *swarm.local_peer_id();
        let mut control = swarm.behaviour().streams.new_control();
        let card_streams = control
            .accept(StreamProtocol::new(CARD_PROTOCOL))
            .expect("registered once");
        let job_streams = control
            .accept(StreamProtocol::new(JOB_PROTOCOL))
            .expect("registered once");
        let (commands, command_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            peers: Mutex::new(PeerTable::default()),
            household: Mutex::new(household),
            listen: Mutex::new(Vec::new()),
            metrics,
            commands,
        });
        let mesh = Mesh {
            me,
            control,
            shared,
        };
        tokio::spawn(cards::serve(card_streams, card, mesh.clone()));
        tokio::spawn(jobs::serve(job_streams, engine));
        tokio::spawn(cards::poll(mesh.clone()));
        tokio::spawn(run(swarm, config, command_rx, mesh.shared.clone()));
        Ok(mesh)
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// Addresses the node listens on, with its peer id.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared.listen.lock().expect("listen lock").clone()
    }

    /// Connected peers with their cards.
    pub fn peers(&self) -> Vec<PeerView> {
        self.shared.peers.lock().expect("peers lock").views()
    }

    /// Peer ids the household has revoked.
    pub fn revoked(&self) -> Vec<String> {
        let h = self.shared.household.lock().expect("household lock");
        h.revoked.iter().cloned().collect()
    }

    /// Revokes `peers` (saving them in the household file) and drops their connections.
    pub async fn revoke(&self, peers: &[String]) -> Result<Vec<String>> {
        let added = {
            let mut h = self.shared.household.lock().expect("household lock");
            h.revoke(peers.iter().map(String::as_str))?
        };
        for p in &added {
            match p.parse::<PeerId>() {
                Ok(id) if id == self.me => {
                    tracing::error!(
                        "this device was removed from the household; it will not be served"
                    )
                }
                Ok(id) => {
                    tracing::warn!(peer = %id, "peer revoked from the household");
                    let _ = self.shared.commands.send(Command::Block(id)).await;
                }
                Err(_) => {
                    tracing::warn!(peer = %p, "ignoring a revoked peer id that does not parse")
                }
            }
        }
        Ok(added)
    }

    /// Runs `request` on `peer`; events (ending with `Done`, `Busy` or `Failed`) arrive on the
    /// channel, which closes early if the peer or the connection fails.
    pub fn open_job(&self, peer: PeerId, request: JobRequest) -> mpsc::Receiver<JobEvent> {
        jobs::open(self.control.clone(), peer, request)
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
                    tracing::warn!(
                        from = %send_back_addr,
                        peer = ?peer_id.map(|p| p.to_string()),
                        error = %error,
                        "refused a connection: the peer did not prove it holds this household's secret, or was revoked"
                    );
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
                for (addr, peer) in &statics {
                    if peer.is_none_or(|p| !swarm.is_connected(&p)) {
                        let _ = swarm.dial(addr.clone());
                    }
                }
            }
        }
    }
}
