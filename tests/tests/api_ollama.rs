//! Ollama's API as Ollama apps meet it: the official `ollama` Python client (installed in
//! `.cache/clients` by `make test`) lists, shows, chats (streamed and not), generates and asks
//! what is loaded, on a node's `--ollama-api` address, and gets the same greedy text as the OpenAI
//! endpoint; Home Assistant's conversation request (as its Ollama integration sends it) is
//! answered; the same through a node that does not hold the model; errors in Ollama's shape;
//! malformed bodies refused while the node carries on.

use std::process::Command;
use std::time::Duration;

use hearth_tests::mesh::{http, post, wait_for, Household, NodeOptions, TestNode};
use hearth_tests::{json_from, repo_root, TestModel};
use serde_json::{json, Value};

const PROMPT: &str = "What is the capital of France?";

/// The node's Ollama address, from its runtime file.
fn ollama_addr(node: &TestNode) -> String {
    let info: Value =
        serde_json::from_slice(&std::fs::read(node.data().join("node.json")).unwrap()).unwrap();
    info["ollama_api"]
        .as_str()
        .expect("the node serves --ollama-api")
        .to_owned()
}

/// What `tests/python/ollama_client.py` got from the node at `addr`.
fn drive_with_the_ollama_client(addr: &str) -> Value {
    let python = repo_root().join(".cache/clients/bin/python");
    assert!(
        python.is_file(),
        "the `ollama` Python client is not installed: run `make clients` (make test does)"
    );
    json_from(
        Command::new(python)
            .arg(repo_root().join("tests/python/ollama_client.py"))
            .args([addr, TestModel::SmolLm2.name(), PROMPT]),
    )
}

#[test]
fn the_ollama_client_gets_the_same_replies_as_openai_clients_from_any_node() {
    let household = Household::new();
    let with_ollama = |opts: NodeOptions| opts.with_args(&["--ollama-api", "127.0.0.1:0"]);
    let holder = TestNode::start(
        "holder",
        &household,
        with_ollama(NodeOptions::holding(TestModel::SmolLm2)),
    );
    let entry = TestNode::start(
        "entry",
        &household,
        with_ollama(NodeOptions::dialing(&[&holder])),
    );
    assert!(entry.wait_for_members(&["entry", "holder"], Duration::from_secs(20)));
    let openai: Value = http()
        .post(holder.url("/v1/chat/completions"))
        .json(&json!({
            "model": TestModel::SmolLm2.name(),
            "messages": [{"role": "user", "content": PROMPT}],
            "temperature": 0, "max_tokens": 16,
        }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let want = openai["choices"][0]["message"]["content"].as_str().unwrap();
    // The same JSON mode on the OpenAI endpoint, through the entry node.
    let chat_as = |format: Value| {
        post(
            &entry,
            "/v1/chat/completions",
            json!({
                "messages": [{"role": "user", "content": "Describe a dog as JSON."}],
                "temperature": 0, "max_tokens": 200, "response_format": format,
            })
            .to_string(),
        )
    };
    let (status, reply) = chat_as(json!({"type": "json_object"}));
    assert_eq!(status, 200, "{reply}");
    let text = reply["choices"][0]["message"]["content"].as_str().unwrap();
    let object: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert!(object.is_object(), "{object}");
    let (status, reply) = chat_as(json!({"type": "json_schema", "json_schema": {"name": "x"}}));
    assert_eq!(status, 400, "{reply}");
    for node in [&holder, &entry] {
        let got = drive_with_the_ollama_client(&ollama_addr(node));
        let name = format!("{}:latest", TestModel::SmolLm2.name());
        assert_eq!(got["tags"], json!([name]), "{}: {got}", node.name);
        assert_eq!(got["show_family"], "llama");
        assert!(
            got["show_parameter_size"]
                .as_str()
                .is_some_and(|p| p.ends_with('M') && p.len() >= 3),
            "{got}"
        );
        assert_eq!(got["chat"], want, "{}", node.name);
        assert_eq!(got["chat_streamed"], want, "{}", node.name);
        assert_eq!(got["generate"], want, "{}", node.name);
        assert_eq!(got["generate_counts"][1], 16);
        assert_eq!(got["generate_counts"][2], "length");
        assert_eq!(got["ps"], json!([name]));
        let ha = &got["home_assistant"];
        assert!(!ha["text"].as_str().unwrap().is_empty(), "{ha}");
        assert!(
            ha["done_reason"] == "stop" || ha["done_reason"] == "length",
            "{ha}"
        );
        assert_eq!(ha["roles"], json!(["assistant"]));
        let object: serde_json::Value = serde_json::from_str(got["json"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{e}: {}", got["json"]));
        assert!(object.is_object(), "{object}");
        let errors = &got["errors"];
        assert_eq!(errors["unknown_model"][0], 404, "{errors}");
        assert_eq!(errors["bad_option"][0], 400, "{errors}");
        assert!(errors["bad_option"][1].as_str().unwrap().contains("top-p"));
        assert_eq!(errors["schema"][0], 400, "{errors}");
        assert_eq!(
            errors["tools"],
            json!([400, "model does not support tools"])
        );
    }
}

#[test]
fn malformed_ollama_requests_get_ollama_shaped_errors() {
    let node = TestNode::start(
        "solo",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let post = |path: &str, body: Vec<u8>| post(&node, path, body);
    for (path, request) in [
        (
            "/api/chat",
            b"{\"model\": \"smollm2-135m\"}\n{\"messages\": []}".to_vec(),
        ),
        (
            "/api/chat",
            br#"{"model": "smollm2-135m", "messages": "hi"}"#.to_vec(),
        ),
        ("/api/generate", br#"{"model": 7, "prompt": "hi"}"#.to_vec()),
        (
            "/api/generate",
            br#"{"model": "smollm2-135m", "prompt": "hi", "options": {"num_predict": 0}}"#.to_vec(),
        ),
        (
            "/api/generate",
            br#"{"model": "smollm2-135m", "prompt": "hi", "images": ["aGk="]}"#.to_vec(),
        ),
        (
            "/api/generate",
            br#"{"model": "smollm2-135m", "prompt": "hi", "format": {"type": "object"}}"#.to_vec(),
        ),
        ("/api/show", br#"{"modell": "x"}"#.to_vec()),
    ] {
        let (status, body) = post(path, request.clone());
        assert_eq!(
            status,
            400,
            "{path} {}: {body}",
            String::from_utf8_lossy(&request)
        );
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    let (status, body) = post(
        "/api/generate",
        br#"{"model": "missing:7b", "prompt": "hi"}"#.to_vec(),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        "/api/embed",
        br#"{"model": "smollm2-135m", "input": "hi"}"#.to_vec(),
    );
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("embedding"));
    match http()
        .post(node.url("/api/chat"))
        .body(vec![b'{'; 8 << 20])
        .send()
    {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
    // Loading a model the Ollama way: no messages, done at once.
    let (status, body) = post("/api/chat", br#"{"model": "smollm2-135m"}"#.to_vec());
    assert_eq!((status, &body["done"]), (200, &json!(true)), "{body}");
    assert_eq!(node.get("/healthz")["status"], "ok");
    assert_eq!(
        http().get(node.url("/")).send().unwrap().text().unwrap(),
        "Ollama is running"
    );
}

#[test]
fn open_webui_requests_are_answered() {
    // The requests Open WebUI's Ollama router sends (backend/open_webui/routers/ollama.py and
    // utils/payload.py `convert_payload_openai_to_ollama`): version, tags and ps to list, then a
    // streamed chat whose options carry `num_predict` and `stop`, `keep_alive` and `system` lifted
    // to the top level.
    let node = TestNode::start(
        "webui",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    assert!(node.get("/api/version")["version"].is_string());
    let name = format!("{}:latest", TestModel::SmolLm2.name());
    assert_eq!(node.get("/api/tags")["models"][0]["model"], name.as_str());
    assert!(node.get("/api/ps")["models"].is_array());
    let r = http()
        .post(node.url("/api/chat"))
        .json(&json!({
            "model": name,
            "messages": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": PROMPT},
            ],
            "stream": true,
            "options": {"temperature": 0, "num_predict": 16, "stop": ["\n\n\n"]},
            "keep_alive": "5m",
            "system": "You are a helpful assistant.",
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/x-ndjson",
        "one JSON object a line"
    );
    let lines: Vec<Value> = r
        .text()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let (last, pieces) = lines.split_last().expect("lines");
    assert!(pieces.iter().all(|l| l["done"] == false));
    assert_eq!(last["done"], true);
    assert_eq!(last["eval_count"], 16, "{last}");
    let text: String = pieces
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap())
        .collect();
    assert!(!text.is_empty());
}

#[test]
fn num_ctx_bounds_a_request_and_keep_alive_unloads_the_model() {
    let node = TestNode::start(
        "den",
        &Household::new(),
        NodeOptions::holding(TestModel::SmolLm2),
    );
    let name = format!("{}:latest", TestModel::SmolLm2.name());
    let generate = |extra: Value| {
        let mut body = json!({
            "model": name, "prompt": PROMPT, "stream": false,
            "options": {"temperature": 0, "num_predict": 400},
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        post(&node, "/api/generate", body.to_string())
    };
    let loaded = || -> Vec<Value> { node.get("/api/ps")["models"].as_array().unwrap().clone() };

    // num_ctx: a prompt that does not fit is refused; one that fits stops at the context's end.
    let (status, reply) = generate(json!({"options": {"num_ctx": 8}}));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("num_ctx"),
        "{reply}"
    );
    let (status, reply) =
        generate(json!({"options": {"temperature": 0, "num_predict": 400, "num_ctx": 64}}));
    assert_eq!(status, 200, "{reply}");
    let used = reply["prompt_eval_count"].as_u64().unwrap() + reply["eval_count"].as_u64().unwrap();
    assert!(used <= 64, "{reply}");
    assert_eq!(reply["done_reason"], "length", "{reply}");

    // Without keep_alive the model stays loaded, as hearth keeps models.
    assert_eq!(loaded().len(), 1);
    assert_eq!(loaded()[0]["expires_at"], "2318-01-01T00:00:00Z");

    // keep_alive "2s": still loaded right after, with its expiry shown; unloaded once it runs out.
    let (status, _) = generate(json!({"keep_alive": "2s", "options": {"num_predict": 4}}));
    assert_eq!(status, 200);
    let after = loaded();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after[0]["expires_at"], "2318-01-01T00:00:00Z");
    assert!(
        wait_for(Duration::from_secs(60), || loaded()
            .is_empty()
            .then_some(()))
        .is_some(),
        "{:?}",
        loaded()
    );

    // keep_alive -1 keeps it; an empty request with keep_alive 0 unloads it at once.
    let (status, _) = generate(json!({"keep_alive": -1, "options": {"num_predict": 4}}));
    assert_eq!(status, 200);
    assert_eq!(loaded().len(), 1);
    let (status, reply) = post(
        &node,
        "/api/generate",
        json!({"model": name, "keep_alive": 0}).to_string(),
    );
    assert_eq!(
        (status, reply["done_reason"].as_str()),
        (200, Some("unload")),
        "{reply}"
    );
    assert!(loaded().is_empty(), "{:?}", loaded());

    // A keep_alive that is not a duration is refused.
    let (status, reply) = generate(json!({"keep_alive": "soon"}));
    assert_eq!(status, 400, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("not a duration"),
        "{reply}"
    );
}
