"""Drives a hearth node with the official `ollama` Python client, as Ollama apps do, and prints
what it got as one JSON object (tests/tests/api_ollama.rs checks it).

Usage: ollama_client.py HOST MODEL PROMPT
"""
import json
import sys

import ollama

host, model, prompt = sys.argv[1:4]
client = ollama.Client(host=f"http://{host}")
greedy = {"temperature": 0, "num_predict": 16}
out = {}
out["tags"] = [m.model for m in client.list().models]
shown = client.show(model)
out["show_family"] = shown.details.family
out["show_parameter_size"] = shown.details.parameter_size
out["chat"] = client.chat(model=model, messages=[{"role": "user", "content": prompt}],
                          options=greedy).message.content
out["chat_streamed"] = "".join(
    part.message.content
    for part in client.chat(model=model, messages=[{"role": "user", "content": prompt}],
                            options=greedy, stream=True))
final = client.generate(model=model, prompt=prompt, options=greedy)
out["generate"] = final.response
out["generate_counts"] = [final.prompt_eval_count, final.eval_count, final.done_reason]
out["ps"] = [m.model for m in client.ps().models]
# JSON mode, as Home Assistant's AI tasks and scripts ask for it.
out["json"] = client.chat(model=model, format="json",
                          messages=[{"role": "user", "content": "Describe a cat as JSON with its name and colour."}],
                          options={"temperature": 0, "num_predict": 200}).message.content
# Home Assistant's conversation agent (homeassistant/components/ollama/entity.py), without an LLM
# API: a system prompt, streamed, keep_alive in seconds, num_ctx in options, no tools, no format.
parts = list(client.chat(
    model=model,
    messages=[ollama.Message(role="system", content="You are a voice assistant for a home."),
              ollama.Message(role="user", content=prompt)],
    tools=None, stream=True, keep_alive="300s", options={"num_ctx": 8192}, think=None,
    format=None))
out["home_assistant"] = {
    "text": "".join(p.message.content or "" for p in parts),
    "done_reason": parts[-1].done_reason,
    "roles": sorted({p.message.role for p in parts}),
}
errors = {}
for name, call in [
    ("unknown_model", lambda: client.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])),
    ("bad_option", lambda: client.chat(model=model, messages=[{"role": "user", "content": "hi"}], options={"top_p": 3})),
    ("schema", lambda: client.chat(model=model, messages=[{"role": "user", "content": "hi"}],
                                   format={"type": "object", "properties": {"a": {"type": "string"}}})),
    ("tools", lambda: client.chat(model=model, messages=[{"role": "user", "content": "hi"}],
                                  tools=[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}}}])),
]:
    try:
        call()
        errors[name] = None
    except ollama.ResponseError as e:
        errors[name] = [e.status_code, e.error]
out["errors"] = errors
print(json.dumps(out))
