"""Streaming completions from a hearth node, for the benchmark scripts."""
import json
import time
import urllib.request


def complete(api, prompt, tokens, model="bench-model"):
    """Streams one greedy completion of `prompt` from the node at `api`.

    Returns (serving node, time of the first token, time of the last token, completion tokens).
    """
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": tokens,
                       "temperature": 0, "stream": True}).encode()
    req = urllib.request.Request(f"http://{api}/v1/completions", body,
                                 {"content-type": "application/json"})
    first = last = None
    n = 0
    with urllib.request.urlopen(req, timeout=300) as r:
        node = r.headers.get("x-hearth-node")
        for line in r:
            if not line.startswith(b"data: {"):
                continue
            ev = json.loads(line[6:])
            if ev["choices"][0].get("text"):
                last = time.perf_counter()
                first = first or last
            if ev.get("usage"):
                n = ev["usage"]["completion_tokens"]
    return node, first, last, n
