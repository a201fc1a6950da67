//! The command line's client for a running node's HTTP API: finds the local node through its
//! runtime file, and streams chat replies from it.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::data_dir::DataDir;
use crate::runtime_file::RuntimeInfo;

/// A node running on this machine, answering on its API.
#[derive(Debug)]
pub struct LocalNode {
    base: String,
    token: Option<String>,
    http: reqwest::blocking::Client,
    pub info: RuntimeInfo,
}

/// How a streamed reply ended.
#[derive(Debug, Clone, Default)]
pub struct Streamed {
    pub text: String,
    /// Nodes that served it (more than one after a failover).
    pub nodes: Vec<String>,
    pub finish: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The conversation the reply was recorded in, if any.
    pub conversation: Option<String>,
}

/// An error answer from the node.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NodeError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl NodeError {
    /// The error in an API answer's body (`{"error": {"code", "message"}}`), with the status
    /// it came with.
    fn from_body(status: u16, body: &Value) -> Self {
        let err = &body["error"];
        NodeError {
            status,
            code: err["code"].as_str().unwrap_or("").to_owned(),
            message: err["message"]
                .as_str()
                .map_or_else(|| format!("the node answered {status}"), str::to_owned),
        }
    }
}

impl LocalNode {
    /// The node whose runtime file is in `data`, if it answers its health check.
    pub fn find(data: &DataDir) -> Option<LocalNode> {
        let bytes = std::fs::read(RuntimeInfo::path(data)).ok()?;
        let info: RuntimeInfo = serde_json::from_slice(&bytes).ok()?;
        let addr: std::net::SocketAddr = info.api.parse().ok()?;
        let host = if addr.ip().is_unspecified() {
            std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
        } else {
            addr
        };
        let node = LocalNode {
            base: format!("http://{host}"),
            token: std::env::var("HEARTH_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            http: reqwest::blocking::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .timeout(None)
                .build()
                .ok()?,
            info,
        };
        let health = node
            .http
            .get(format!("{}/healthz", node.base))
            .timeout(Duration::from_secs(2))
            .send()
            .ok()?;
        health.status().is_success().then_some(node)
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::blocking::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    fn checked(response: reqwest::blocking::Response) -> Result<reqwest::blocking::Response> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap_or(Value::Null);
        Err(NodeError::from_body(status, &body).into())
    }

    /// Sends a request (a JSON body when given; `path` may carry a query) and returns the
    /// answer's body when the node succeeded.
    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::blocking::Response> {
        let mut r = self.request(method, path).timeout(Duration::from_secs(30));
        if let Some(b) = body {
            r = r.json(b);
        }
        let r = r
            .send()
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        Self::checked(r)
    }

    /// `GET path` as JSON.
    pub fn get(&self, path: &str) -> Result<Value> {
        Ok(self.send(reqwest::Method::GET, path, None)?.json()?)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Ok(self.send(reqwest::Method::POST, path, Some(body))?.json()?)
    }

    /// Posts a streaming request to `path` (`/v1/chat/completions` or `/v1/completions`) and calls
    /// `on_text` with each piece; `on_text` returns `false` to stop (which ends the reply on the
    /// serving node too).
    pub fn stream(
        &self,
        path: &str,
        mut body: Value,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Streamed> {
        body["stream"] = Value::Bool(true);
        let mut out = Streamed::default();
        let mut failed = None;
        // The reply ends with [DONE], or when `on_text` stops it; anything else ended early.
        let mut over = false;
        self.events(path, &body, |v| {
            if v.is_null() {
                over = true;
            } else if v.get("error").is_some() {
                failed = Some(v.clone());
            } else {
                over = !out.read_event(v, &mut on_text);
            }
            !over && failed.is_none()
        })?;
        if let Some(body) = failed {
            return Err(NodeError::from_body(200, &body).into());
        }
        if !over {
            bail!("the reply stream ended early")
        }
        Ok(out)
    }

    /// Posts `body` to `path` and calls `on_event` with each server-sent event's JSON (`null`
    /// for `[DONE]`) until it returns `false` or the stream ends.
    pub fn events(
        &self,
        path: &str,
        body: &Value,
        mut on_event: impl FnMut(&Value) -> bool,
    ) -> Result<()> {
        let r = self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .with_context(|| format!("cannot reach the node at {}", self.base))?;
        let r = Self::checked(r)?;
        for line in BufReader::new(r).lines() {
            let line = line.context("the event stream broke")?;
            let Some(data) = line.strip_prefix("data:").map(str::trim) else {
                continue;
            };
            let v: Value = if data == "[DONE]" {
                Value::Null
            } else {
                serde_json::from_str(data).context("the node sent a bad event")?
            };
            if !on_event(&v) {
                return Ok(());
            }
        }
        Ok(())
    }
}

impl Streamed {
    /// Takes one event of a streamed reply; false when `on_text` asked to stop.
    fn read_event(&mut self, v: &Value, on_text: &mut impl FnMut(&str) -> bool) -> bool {
        if let Some(c) = v["hearth"]["conversation"].as_str() {
            self.conversation = Some(c.to_owned());
        }
        if let Some(n) = v["hearth"]["node"].as_str() {
            if self.nodes.last().map(String::as_str) != Some(n) {
                self.nodes.push(n.to_owned());
            }
        }
        let choice = &v["choices"][0];
        let piece = choice["delta"]["content"]
            .as_str()
            .or_else(|| choice["text"].as_str())
            .unwrap_or("");
        if !piece.is_empty() {
            self.text.push_str(piece);
            if !on_text(piece) {
                return false;
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.prompt_tokens = u["prompt_tokens"].as_u64().unwrap_or(0);
            self.completion_tokens = u["completion_tokens"].as_u64().unwrap_or(0);
        }
        true
    }
}
