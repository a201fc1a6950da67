//! The client's state and its frame: updates from the background applied, shortcuts read, then
//! the views (`ui/`) drawn over the state. Views change the state and send commands; nothing
//! here waits on the network.

use std::time::Instant;

use egui_commonmark::CommonMarkCache;
use hearth_protocol::history::{Conversation, Id, Message, Status, Summary};
use serde_json::{json, Value};

use crate::api::{Change, Household, Member, Model};
use crate::backend::{Backend, Command, Connection, ReplyUpdate, Update};
use crate::branches;
use crate::connection::Target;
use crate::throughput::Throughput;

/// Which view fills the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Chat,
    Mesh,
}

/// Sampling settings a user chose; `None` fields leave the node's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub max_tokens: Option<u32>,
    pub seed: Option<u64>,
}

/// A reply streaming (or just ended) in this client.
#[derive(Debug, Clone)]
pub struct Live {
    /// The conversation it belongs to; `None` until the node says which (a new one).
    pub conversation: Option<Id>,
    /// The user's message, shown until the conversation holds it.
    pub user: Option<String>,
    /// How many messages the conversation had when it was sent.
    pub base_len: usize,
    /// The message the new turn follows (`None`: it starts the conversation); until the node
    /// records the turn, the branch is shown up to there.
    pub after: Option<Id>,
    pub text: String,
    pub node: String,
    pub model: String,
    pub started: Instant,
    pub pieces: u64,
    pub done: Option<String>,
    pub error: Option<String>,
}

impl Live {
    /// Whether it is still streaming.
    pub fn streaming(&self) -> bool {
        self.done.is_none() && self.error.is_none()
    }
}

/// The desktop client.
pub struct App {
    pub(crate) backend: Backend,
    pub(crate) target: Target,
    pub(crate) connection: Connection,
    pub(crate) starting: Option<String>,
    pub(crate) conversations: Vec<Summary>,
    pub(crate) search: String,
    /// The conversation chosen in the sidebar; `None`: a new chat.
    pub(crate) selected: Option<Id>,
    /// Its messages, once fetched.
    pub(crate) open: Option<Conversation>,
    /// The branch shown: the path to this message; `None`: the newest.
    pub(crate) tip: Option<Id>,
    pub(crate) draft: String,
    pub(crate) system: String,
    pub(crate) sampling: Sampling,
    pub(crate) model: Option<String>,
    pub(crate) models: Vec<Model>,
    pub(crate) members: Vec<Member>,
    pub(crate) throughput: Throughput,
    pub(crate) since: Instant,
    pub(crate) household: Option<Household>,
    pub(crate) show_join_code: bool,
    pub(crate) live: Option<Live>,
    pub(crate) route: Option<Value>,
    pub(crate) view: View,
    pub(crate) notices: Vec<String>,
    pub(crate) renaming: Option<(Id, String)>,
    pub(crate) confirm_delete: Option<Id>,
    pub(crate) confirm_revoke: Option<(String, String)>,
    pub(crate) editing: Option<(Id, String)>,
    pub(crate) settings_open: bool,
    /// Whether the form to connect to another node is shown.
    pub(crate) connect_open: bool,
    pub(crate) connect_url: String,
    pub(crate) connect_token: String,
    pub(crate) markdown: CommonMarkCache,
    pub(crate) focus_search: bool,
    pub(crate) focus_input: bool,
}

impl App {
    /// A client for `target`, its background started on `ctx`.
    pub fn new(target: Target, ctx: &egui::Context) -> App {
        let backend = Backend::start(target.clone(), ctx.clone());
        App {
            backend,
            connection: Connection::Connecting { url: target.url() },
            connect_url: target.url.clone().unwrap_or_default(),
            connect_token: target.token.clone().unwrap_or_default(),
            target,
            starting: None,
            conversations: Vec::new(),
            search: String::new(),
            selected: None,
            open: None,
            tip: None,
            draft: String::new(),
            system: String::new(),
            sampling: Sampling::default(),
            model: None,
            models: Vec::new(),
            members: Vec::new(),
            throughput: Throughput::default(),
            since: Instant::now(),
            household: None,
            show_join_code: false,
            live: None,
            route: None,
            view: View::Chat,
            notices: Vec::new(),
            renaming: None,
            confirm_delete: None,
            confirm_revoke: None,
            editing: None,
            settings_open: false,
            connect_open: false,
            markdown: CommonMarkCache::default(),
            focus_search: false,
            focus_input: true,
        }
    }

    /// The sampling settings requests are sent with.
    pub fn sampling_mut(&mut self) -> &mut Sampling {
        &mut self.sampling
    }

    /// Sends `command` to the background, or says why it could not.
    pub(crate) fn command(&mut self, command: Command) {
        if let Err(e) = self.backend.send(command) {
            self.notices.push(e);
        }
    }

    /// The model a request goes to when none is picked: the first one some node can run now.
    pub(crate) fn default_model(&self) -> Option<&str> {
        self.models
            .iter()
            .find(|m| m.hearth.servable != "no")
            .map(|m| m.id.as_str())
    }

    /// Whether the node answers.
    pub(crate) fn connected(&self) -> bool {
        matches!(self.connection, Connection::Connected { .. })
    }

    /// Whether a reply is streaming.
    pub(crate) fn streaming(&self) -> bool {
        self.live.as_ref().is_some_and(Live::streaming)
    }

    /// The messages of the branch shown.
    pub(crate) fn path(&self) -> Vec<&Message> {
        self.open
            .as_ref()
            .map(|c| branches::path(&c.messages, self.tip))
            .unwrap_or_default()
    }

    /// Starts a new chat.
    pub(crate) fn new_chat(&mut self) {
        self.selected = None;
        self.open = None;
        self.tip = None;
        self.system.clear();
        self.editing = None;
        if !self.streaming() {
            self.live = None;
        }
        self.view = View::Chat;
        self.focus_input = true;
    }

    /// Opens conversation `id`.
    pub(crate) fn select(&mut self, id: Id) {
        if self.selected == Some(id) {
            return;
        }
        self.selected = Some(id);
        self.open = None;
        self.tip = None;
        self.editing = None;
        if !self.streaming() {
            self.live = None;
        }
        self.view = View::Chat;
        self.command(Command::Open(id));
    }

    /// Sends the draft as the next user message on the branch shown.
    pub(crate) fn send_draft(&mut self) {
        let text = self.draft.trim().to_owned();
        if text.is_empty() || self.streaming() || !self.connected() {
            return;
        }
        let path: Vec<Message> = self.path().into_iter().cloned().collect();
        let parent = path.last().map(|m| m.id);
        let hearth = match (self.selected, parent) {
            (None, _) => json!({"conversation": "new"}),
            (Some(id), Some(p)) => json!({"conversation": id.to_string(), "parent": p.to_string()}),
            (Some(id), None) => json!({"conversation": id.to_string(), "parent": "root"}),
        };
        self.draft.clear();
        self.start(&path, Some(text), hearth);
    }

    /// Asks for another reply to the user message before assistant message `reply`: a new
    /// branch beside it.
    pub(crate) fn regenerate(&mut self, reply: Id) {
        let Some((id, path, at)) = self.branch_at(reply) else {
            return;
        };
        let Some(asked) = path[at].parent else {
            return;
        };
        let hearth = json!({"conversation": id.to_string(), "reply_to": asked.to_string()});
        self.start(&path[..at], None, hearth);
    }

    /// Sends `text` in place of user message `message`: a new branch, the old one kept.
    pub(crate) fn resend_edited(&mut self, message: Id, text: String) {
        let Some((id, path, at)) = self.branch_at(message) else {
            return;
        };
        let parent = path[at]
            .parent
            .map_or_else(|| "root".to_owned(), |p| p.to_string());
        let hearth = json!({"conversation": id.to_string(), "parent": parent});
        self.start(&path[..at], Some(text), hearth);
    }

    /// The conversation shown, its branch and where `message` is on it, when a new turn may
    /// start there (nothing streaming).
    fn branch_at(&self, message: Id) -> Option<(Id, Vec<Message>, usize)> {
        let id = self.selected.filter(|_| !self.streaming())?;
        let path: Vec<Message> = self.path().into_iter().cloned().collect();
        let at = path.iter().position(|m| m.id == message)?;
        Some((id, path, at))
    }

    /// Sends a chat request: the system prompt (unless the conversation records one), the
    /// messages of `path`, and `user` if any.
    fn start(&mut self, path: &[Message], user: Option<String>, hearth: Value) {
        let mut messages = Vec::new();
        let system = self.system.trim();
        if !system.is_empty() && path.first().is_none_or(|m| m.role != "system") {
            messages.push(json!({"role": "system", "content": system}));
        }
        for m in path {
            // Failed replies are shown, not sent back to the model.
            if m.role == "assistant" && (m.status == Status::Error || m.text.is_empty()) {
                continue;
            }
            messages.push(json!({"role": m.role, "content": m.text}));
        }
        if let Some(u) = &user {
            messages.push(json!({"role": "user", "content": u}));
        }
        let model = self
            .model
            .clone()
            .or_else(|| self.default_model().map(str::to_owned));
        let mut body = json!({"messages": messages, "hearth": hearth});
        if let Some(m) = &model {
            body["model"] = json!(m);
        }
        let s = &self.sampling;
        for (key, value) in [
            ("temperature", s.temperature.map(|v| json!(v))),
            ("top_p", s.top_p.map(|v| json!(v))),
            ("top_k", s.top_k.map(|v| json!(v))),
            ("max_tokens", s.max_tokens.map(|v| json!(v))),
            ("seed", s.seed.map(|v| json!(v))),
        ] {
            if let Some(v) = value {
                body[key] = v;
            }
        }
        self.live = Some(Live {
            conversation: self.selected,
            user,
            base_len: self.open.as_ref().map_or(0, |c| c.messages.len()),
            after: path.last().map(|m| m.id),
            text: String::new(),
            node: String::new(),
            model: model.clone().unwrap_or_default(),
            started: Instant::now(),
            pieces: 0,
            done: None,
            error: None,
        });
        self.route = None;
        // The new messages are the newest: their branch is the one to show.
        self.tip = None;
        self.command(Command::Send {
            body,
            model: model.unwrap_or_default(),
        });
    }

    /// Stops the reply streaming.
    pub(crate) fn stop(&mut self) {
        if self.streaming() {
            self.command(Command::Stop);
        }
    }

    /// Applies what the background sent.
    fn apply(&mut self, update: Update) {
        match update {
            Update::Connection(c) => {
                if matches!(c, Connection::Connected { .. }) {
                    if !self.search.is_empty() {
                        let q = self.search.clone();
                        self.command(Command::Search(q));
                    }
                    if let Some(id) = self.selected {
                        self.command(Command::Open(id));
                    }
                }
                self.connection = c;
            }
            Update::Conversations { query, list } => {
                // An answer to an older search, overtaken by typing, is dropped.
                if query == self.search {
                    self.conversations = list;
                }
            }
            Update::Conversation(c) => {
                if Some(c.summary.id) != self.selected {
                    return;
                }
                if self.system.is_empty() || self.open.is_none() {
                    self.system = branches::path(&c.messages, None)
                        .first()
                        .filter(|m| m.role == "system")
                        .map(|m| m.text.clone())
                        .unwrap_or_default();
                }
                // A finished reply's live copy gives way to the record once it holds the end.
                if let Some(live) = &self.live {
                    let recorded = c.messages.len() > live.base_len
                        && c.messages
                            .last()
                            .is_some_and(|m| m.status != Status::Streaming);
                    if !live.streaming() && recorded {
                        self.live = None;
                    }
                }
                self.open = Some(c);
            }
            Update::Changed(Change::Conversation(id)) => {
                if Some(id) == self.selected {
                    self.command(Command::Open(id));
                }
            }
            Update::Changed(Change::Index | Change::Resync) => {
                let q = self.search.clone();
                self.command(Command::Search(q));
                if let Some(id) = self.selected {
                    self.command(Command::Open(id));
                }
            }
            Update::Gone(id) => {
                if self.selected == Some(id) {
                    self.new_chat();
                }
                self.conversations.retain(|c| c.id != id);
            }
            Update::Members(members) => {
                let t = self.since.elapsed().as_secs_f64();
                for m in &members {
                    self.throughput
                        .add(&m.card.name, t, m.card.tokens_generated);
                }
                self.members = members;
            }
            Update::Models(models) => self.models = models,
            Update::Household(h) => self.household = Some(h),
            Update::Route(r) => self.route = Some(r),
            Update::Notice(n) => {
                if !self.notices.contains(&n) {
                    self.notices.push(n);
                }
            }
            Update::Starting(line) => self.starting = Some(line),
            Update::Reply(r) => self.apply_reply(r),
        }
    }

    fn apply_reply(&mut self, update: ReplyUpdate) {
        let Some(live) = &mut self.live else {
            return;
        };
        match update {
            ReplyUpdate::Started { node, conversation } => {
                live.node = node;
                if let Some(id) = conversation {
                    self.adopt(id);
                }
            }
            ReplyUpdate::Recorded(id) => self.adopt(id),
            ReplyUpdate::Text { text, node } => {
                live.text.push_str(&text);
                live.pieces += 1;
                if !node.is_empty() {
                    live.node = node;
                }
            }
            ReplyUpdate::Done { reason, .. } => live.done = Some(reason),
            ReplyUpdate::Failed(e) => live.error = Some(e),
        }
    }

    /// The reply streaming is recorded in conversation `id`: show it.
    fn adopt(&mut self, id: Id) {
        let Some(live) = &mut self.live else {
            return;
        };
        live.conversation = Some(id);
        if self.selected.is_none() {
            self.selected = Some(id);
            self.command(Command::Open(id));
            let q = self.search.clone();
            self.command(Command::Search(q));
        }
    }

    /// Keyboard shortcuts: Ctrl+N new chat, Ctrl+K search, Esc stop (or cancel an edit).
    fn shortcuts(&mut self, ctx: &egui::Context) {
        use egui::{Key, KeyboardShortcut, Modifiers};
        let (new, search, escape) = ctx.input_mut(|i| {
            (
                i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::N)),
                i.consume_shortcut(&KeyboardShortcut::new(Modifiers::COMMAND, Key::K)),
                i.key_pressed(Key::Escape),
            )
        });
        if new {
            self.new_chat();
        }
        if search {
            self.focus_search = true;
        }
        if escape {
            if self.streaming() {
                self.stop();
            } else {
                self.editing = None;
                self.renaming = None;
            }
        }
    }
}

impl eframe::App for App {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        for update in self.backend.updates() {
            self.apply(update);
        }
        self.backend.mesh_visible.store(
            self.view == View::Mesh,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.shortcuts(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        crate::ui::show(self, ui);
    }
}
