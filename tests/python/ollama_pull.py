"""Pulls a model through a hearth node with the official `ollama` Python client, as Ollama apps
do, and prints what it saw as one JSON object (tests/tests/share_pull.rs checks it).

Usage: ollama_pull.py HOST MODEL
"""
import json
import sys

import ollama

host, model = sys.argv[1:3]
client = ollama.Client(host=f"http://{host}")
out = {"statuses": [], "digests": [], "progress_lines": 0, "completed": None, "total": None}
for part in client.pull(model, stream=True):
    if part.status not in out["statuses"]:
        out["statuses"].append(part.status)
    if part.digest and part.digest not in out["digests"]:
        out["digests"].append(part.digest)
    if part.completed is not None:
        out["progress_lines"] += 1
        out["completed"] = part.completed
        out["total"] = part.total
out["tags"] = [m.model for m in client.list().models]
out["again"] = client.pull(model).status
try:
    client.pull("no-such-model")
    out["unknown"] = None
except ollama.ResponseError as e:
    out["unknown"] = [e.status_code, e.error]
print(json.dumps(out))
