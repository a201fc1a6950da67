//! The client's background work: a tokio runtime on its own thread that talks to the node and
//! hands results to the UI through a bounded channel, waking it with `request_repaint`. The UI
//! sends [`Command`]s and never waits on the network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hearth_protocol::history::{Conversation, Id, Summary};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::api::{Api, ApiError, Change, Chunk, Household, Member, Model};
use crate::connection::{self, Target};

/// How often the connection and the mesh are checked.
const POLL: Duration = Duration::from_millis(1500);
/// Updates waiting for the UI; senders wait when it is full.
const UPDATES: usize = 1024;

/// What the UI asks for.
#[derive(Debug)]
pub enum Command {
    /// Talk to another node (or the local one again).
    Connect(Target),
    /// Start a local node, then connect to it.
    StartNode,
    /// The conversation list, filtered by a search.
    Search(String),
    Open(Id),
    Rename(Id, String),
    Delete(Id),
    /// Replace a message's text (a conversation's system prompt).
    EditMessage {
        conversation: Id,
        message: Id,
        text: String,
    },
    /// Start a reply: OpenAI's request body, with hearth's options in it.
    Send {
        body: Value,
        model: String,
    },
    /// Stop the reply streaming now.
    Stop,
    Revoke(String),
}

/// The connection as the UI shows it.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Connecting {
        url: String,
    },
    Connected {
        url: String,
        node: String,
    },
    /// Nothing answers; retried every few seconds.
    Unreachable {
        url: String,
        error: String,
        local: bool,
    },
    /// The node needs another token.
    Unauthorized {
        url: String,
        message: String,
    },
}

/// What the background hands the UI.
#[derive(Debug)]
pub enum Update {
    Connection(Connection),
    /// The conversations matching `query` (all when empty), newest first.
    Conversations {
        query: String,
        list: Vec<Summary>,
    },
    Conversation(Conversation),
    /// The history changed on some device.
    Changed(Change),
    /// A conversation is gone (deleted here or elsewhere).
    Gone(Id),
    Members(Vec<Member>),
    Models(Vec<Model>),
    Household(Household),
    Reply(ReplyUpdate),
    /// The route a reply's model would take when it was sent.
    Route(Value),
    /// Something that failed, to show to the user.
    Notice(String),
    /// Progress of a local node being started.
    Starting(String),
}

/// A streaming reply's progress.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyUpdate {
    Started {
        node: String,
        conversation: Option<Id>,
    },
    Recorded(Id),
    Text {
        text: String,
        node: String,
    },
    Done {
        reason: String,
        tokens: Option<u64>,
    },
    Failed(String),
}

/// The background half of the client.
pub struct Backend {
    commands: mpsc::Sender<Command>,
    updates: mpsc::Receiver<Update>,
    /// Whether the mesh view is shown (mesh polls wake the UI only then).
    pub mesh_visible: Arc<AtomicBool>,
    _runtime: tokio::runtime::Runtime,
}

impl Backend {
    /// Starts the background work for `target`, waking `ctx` when something arrives.
    pub fn start(target: Target, ctx: egui::Context) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hearth-gui-net")
            .enable_all()
            .build()
            .expect("a tokio runtime with one worker starts");
        let (commands, rx) = mpsc::channel(64);
        let (tx, updates) = mpsc::channel(UPDATES);
        let mesh_visible = Arc::new(AtomicBool::new(false));
        let out = Out {
            tx,
            ctx,
            mesh_visible: mesh_visible.clone(),
        };
        runtime.spawn(run(target, rx, out));
        Backend {
            commands,
            updates,
            mesh_visible,
            _runtime: runtime,
        }
    }

    /// Asks the background for something; says so when it is too busy to take it.
    pub fn send(&self, command: Command) -> Result<(), String> {
        self.commands
            .try_send(command)
            .map_err(|_| "the client is busy; try again".to_owned())
    }

    /// Everything that arrived since the last call.
    pub fn updates(&mut self) -> Vec<Update> {
        let mut all = Vec::new();
        while let Ok(u) = self.updates.try_recv() {
            all.push(u);
        }
        all
    }
}

/// The way to the UI.
#[derive(Clone)]
struct Out {
    tx: mpsc::Sender<Update>,
    ctx: egui::Context,
    mesh_visible: Arc<AtomicBool>,
}

impl Out {
    async fn send(&self, update: Update) {
        if self.tx.send(update).await.is_ok() {
            self.ctx.request_repaint();
        }
    }

    /// Sends `update` without waking the UI (it is shown at the next repaint anyway); when
    /// updates have piled up, it is dropped and the UI woken to take the rest, so that a window
    /// left idle for hours never blocks the background.
    fn quietly(&self, update: Update) {
        if self.tx.try_send(update).is_err() {
            self.ctx.request_repaint();
        }
    }

    async fn notice(&self, what: &str, e: &ApiError) {
        self.send(Update::Notice(format!("{what}: {e}"))).await;
    }
}

/// The background's main loop: the connection watch and every command, each in its own task so
/// that none waits on another.
async fn run(mut target: Target, mut commands: mpsc::Receiver<Command>, out: Out) {
    let mut api = Api::new(&target.url(), target.token.clone());
    let mut watcher = tokio::spawn(watch(target.clone(), out.clone()));
    let mut reply: Option<oneshot::Sender<()>> = None;
    while let Some(command) = commands.recv().await {
        // The local node may have restarted on another port.
        let url = target.url();
        if api.base() != url {
            api = Api::new(&url, target.token.clone());
        }
        let (api2, out2) = (api.clone(), out.clone());
        match command {
            Command::Connect(t) => {
                watcher.abort();
                target = t;
                api = Api::new(&target.url(), target.token.clone());
                watcher = tokio::spawn(watch(target.clone(), out.clone()));
            }
            Command::StartNode => {
                let target = target.clone();
                tokio::spawn(start_node(target, out2));
            }
            Command::Search(q) => {
                tokio::spawn(async move { list(&api2, &q, &out2).await });
            }
            Command::Open(id) => {
                tokio::spawn(async move { open(&api2, id, &out2).await });
            }
            Command::Rename(id, title) => {
                tokio::spawn(async move {
                    if let Err(e) = api2.rename(id, &title).await {
                        out2.notice("cannot rename", &e).await;
                    }
                });
            }
            Command::Delete(id) => {
                tokio::spawn(async move {
                    match api2.delete(id).await {
                        Ok(()) => out2.send(Update::Gone(id)).await,
                        Err(e) => out2.notice("cannot delete", &e).await,
                    }
                });
            }
            Command::EditMessage {
                conversation,
                message,
                text,
            } => {
                tokio::spawn(async move {
                    if let Err(e) = api2.edit_message(conversation, message, &text).await {
                        out2.notice("cannot save the system prompt", &e).await;
                    }
                });
            }
            Command::Send { body, model } => {
                let (stop, stopped) = oneshot::channel();
                reply = Some(stop);
                tokio::spawn(stream_reply(api2, body, model, stopped, out2));
            }
            Command::Stop => {
                if let Some(stop) = reply.take() {
                    let _ = stop.send(());
                }
            }
            Command::Revoke(peer) => {
                tokio::spawn(async move {
                    match api2.revoke(&peer).await {
                        Ok(()) => {
                            if let Ok(h) = api2.household().await {
                                out2.send(Update::Household(h)).await;
                            }
                        }
                        Err(e) => out2.notice("cannot remove the device", &e).await,
                    }
                });
            }
        }
    }
}

/// Watches the node: its health every [`POLL`]; on (re)connecting, everything the UI shows
/// and the history's change stream; while connected, the mesh.
async fn watch(target: Target, out: Out) {
    let mut last: Option<Connection> = None;
    let mut changes: Option<tokio::task::JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_members: Vec<(String, Vec<String>)> = Vec::new();
    let mut api = Api::new(&target.url(), target.token.clone());
    loop {
        tick.tick().await;
        let url = target.url();
        if api.base() != url {
            api = Api::new(&url, target.token.clone());
        }
        // The mesh is read with the token, so it also tells whether the token is accepted.
        let unreachable = |e: ApiError| Connection::Unreachable {
            url: url.clone(),
            error: e.to_string(),
            local: target.is_local(),
        };
        let (state, members) = match api.health().await {
            Ok(h) => match api.members().await {
                Ok(members) => {
                    let node = h.node;
                    (
                        Connection::Connected {
                            url: url.clone(),
                            node,
                        },
                        Some(members),
                    )
                }
                Err(ApiError::Unauthorized(message)) => (
                    Connection::Unauthorized {
                        url: url.clone(),
                        message,
                    },
                    None,
                ),
                Err(e) => (unreachable(e), None),
            },
            Err(e) => (unreachable(e), None),
        };
        let newly = members.is_some() && last.as_ref() != Some(&state);
        if last.as_ref() != Some(&state) {
            out.send(Update::Connection(state.clone())).await;
        }
        last = Some(state);
        if newly {
            // A new connection: everything again (models and household follow from the mesh
            // looking new), and the change stream from here.
            if let Some(c) = changes.take() {
                c.abort();
            }
            list(&api, "", &out).await;
            last_members.clear();
        }
        let Some(members) = members else {
            if let Some(c) = changes.take() {
                c.abort();
            }
            continue;
        };
        if changes.as_ref().is_none_or(|c| c.is_finished()) {
            changes = Some(tokio::spawn(follow_changes(api.clone(), out.clone())));
        }
        // Wake the UI for the plot only when it is shown, or when the mesh changed.
        let shape: Vec<(String, Vec<String>)> = members
            .iter()
            .map(|m| (m.card.name.clone(), m.card.loaded.clone()))
            .collect();
        if shape != last_members {
            refresh(&api, &out).await;
            out.send(Update::Members(members)).await;
        } else if out.mesh_visible.load(Ordering::Relaxed) {
            out.send(Update::Members(members)).await;
        } else {
            out.quietly(Update::Members(members));
        }
        last_members = shape;
    }
}

/// The models and the household, which change rarely.
async fn refresh(api: &Api, out: &Out) {
    match api.models().await {
        Ok(m) => out.send(Update::Models(m)).await,
        Err(e) => out.notice("cannot list models", &e).await,
    }
    if let Ok(h) = api.household().await {
        out.send(Update::Household(h)).await;
    }
}

async fn list(api: &Api, query: &str, out: &Out) {
    match api.conversations(query).await {
        Ok(list) => {
            let query = query.to_owned();
            out.send(Update::Conversations { query, list }).await;
        }
        Err(e) => out.notice("cannot list conversations", &e).await,
    }
}

async fn open(api: &Api, id: Id, out: &Out) {
    match api.conversation(id).await {
        Ok(c) => out.send(Update::Conversation(c)).await,
        Err(ApiError::Refused { status: 404, .. }) => out.send(Update::Gone(id)).await,
        Err(e) => out.notice("cannot open the conversation", &e).await,
    }
}

/// Relays the history's changes until the stream ends (the watch starts it again).
async fn follow_changes(api: Api, out: Out) {
    let Ok(changes) = api.changes().await else {
        return;
    };
    futures::pin_mut!(changes);
    while let Some(Ok(change)) = changes.next().await {
        out.send(Update::Changed(change)).await;
    }
}

/// Streams one reply to the UI until it ends, fails or `stopped` fires (dropping the stream,
/// which stops the reply on the node; it records the reply as stopped).
async fn stream_reply(
    api: Api,
    body: Value,
    model: String,
    mut stopped: oneshot::Receiver<()>,
    out: Out,
) {
    {
        let (api, out) = (api.clone(), out.clone());
        tokio::spawn(async move {
            if let Ok(r) = api.route(&model).await {
                out.send(Update::Route(r)).await;
            }
        });
    }
    let started = tokio::select! {
        s = api.chat(body) => s,
        _ = &mut stopped => {
            out.send(Update::Reply(ReplyUpdate::Done { reason: "stopped".into(), tokens: None })).await;
            return;
        }
    };
    let mut stream = match started {
        Ok(s) => s,
        Err(e) => {
            out.send(Update::Reply(ReplyUpdate::Failed(e.to_string())))
                .await;
            return;
        }
    };
    out.send(Update::Reply(ReplyUpdate::Started {
        node: stream.node.clone(),
        conversation: stream.conversation,
    }))
    .await;
    let mut recorded = stream.conversation;
    let end = loop {
        tokio::select! {
            chunk = stream.chunks.next() => match chunk {
                Some(Ok(Chunk::Text { text, node })) => {
                    out.send(Update::Reply(ReplyUpdate::Text { text, node })).await;
                }
                Some(Ok(Chunk::Recorded(id))) => {
                    if recorded != Some(id) {
                        recorded = Some(id);
                        out.send(Update::Reply(ReplyUpdate::Recorded(id))).await;
                    }
                }
                Some(Ok(Chunk::Finished { reason, tokens })) => break ReplyUpdate::Done { reason, tokens },
                Some(Ok(Chunk::Failed(message))) => break ReplyUpdate::Failed(message),
                Some(Err(e)) => break ReplyUpdate::Failed(e.to_string()),
                None => break ReplyUpdate::Failed("the node ended the reply without finishing it".into()),
            },
            _ = &mut stopped => break ReplyUpdate::Done { reason: "stopped".into(), tokens: None },
        }
    };
    drop(stream);
    out.send(Update::Reply(end)).await;
    // The node writes the reply's end before its last event; fetch the recorded outcome.
    if let Some(id) = recorded {
        open(&api, id, &out).await;
    }
}

/// Starts a local node and reports its progress until it answers (at most two minutes).
async fn start_node(target: Target, out: Out) {
    let Some(data_dir) = target.data_dir() else {
        out.send(Update::Notice(
            "no data directory for a local node: pass --data-dir".into(),
        ))
        .await;
        return;
    };
    let hearth = target.hearth();
    out.send(Update::Starting(format!(
        "starting {} node",
        hearth.display()
    )))
    .await;
    let started = {
        let (hearth, data_dir) = (hearth.clone(), data_dir.clone());
        tokio::task::spawn_blocking(move || connection::start_node(&hearth, &data_dir)).await
    };
    let started = match started {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return out.send(Update::Starting(format!("failed: {e}"))).await,
        Err(e) => return out.send(Update::Starting(format!("failed: {e}"))).await,
    };
    for _ in 0..240 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if Api::new(&target.url(), target.token.clone())
            .health()
            .await
            .is_ok()
        {
            out.send(Update::Starting(format!(
                "node started (pid {}); it keeps serving the household after this window closes",
                started.pid
            )))
            .await;
            return;
        }
        if let Some(line) = connection::last_line(&started.log) {
            out.send(Update::Starting(line)).await;
        }
    }
    out.send(Update::Starting(format!(
        "the node did not answer within two minutes; see {}",
        started.log.display()
    )))
    .await;
}
