"""Writes reference token ids and greedy continuations from llama.cpp for hearth's tests.

Usage: reference_fixtures.py MODELS_DIR FIXTURES_DIR (see scripts/make-reference-fixtures).
"""
import json
import sys
from pathlib import Path

import jinja2
import numpy as np
import llama_cpp
from llama_cpp import Llama

GREEDY_TOKENS = 32

# Texts chosen to trip tokenizers: digits, whitespace runs, newlines, accents, CJK, emoji,
# special tokens written inline, contractions, code.
TRICKY_TEXTS = [
    "Hello, world!",
    "The year 2024 had 366 days; pi is 3.14159 and 1,000,000 is a million.",
    "  leading spaces, two  inner   runs    and trailing   ",
    "line one\nline two\n\n\nafter three newlines\r\nwindows line\ttab\t\ttabs",
    "Café crème brûlée, naïve façade, Ångström, ñandú, Zürich",
    "日本語のテキストと中文文本，还有한국어 텍스트。",
    "Emoji: 😀🎉👍🏽 and a family 👨‍👩‍👧‍👦 plus flags 🇫🇷🇯🇵",
    "I'm sure they're here, we've done it, you'll see, he'd know, it's John's.",
    "def f(x):\n    return x**2 + 1  # comment\n\nprint(f(12345))",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>special <eos> tokens</s> and <unk> inline",
    "Mixed: ÀÉÎÕÜ αβγδ Привет мир שלום مرحبا नमस्ते",
    "URLs like https://example.com/path?q=1&r=2#frag and emails a.b@c.de",
    "    indented\n\tand tabbed\n \n  \n",
    "",
]

QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about autumn leaves.",
    "Explain photosynthesis in one sentence.",
    "What is 17 times 23?",
    "Give me three tips for better sleep.",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Describe the color blue to someone who cannot see.",
    "List the planets of the solar system.",
    "What is a prime number?",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "What is the boiling point of water in Fahrenheit?",
    "Name a famous painting by Leonardo da Vinci.",
    "How many legs does a spider have?",
    "What does a thermometer measure?",
    "Suggest a name for a pet goldfish.",
    "What is the largest ocean on Earth?",
    "Write one sentence about the moon.",
    "What language is spoken in Brazil?",
    "How do I make a cup of tea?",
    "What is the opposite of hot?",
    "Who painted the Mona Lisa?",
    "What is the square root of 81?",
]

COMPLETIONS = [
    "The capital of France is",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "def fibonacci(n):\n",
    "Water boils at a temperature of",
    "The quick brown fox",
    "In 1969, the first humans",
    "A recipe for pancakes:\n1.",
    "The meaning of life is",
    "Photosynthesis is the process by which",
    "import numpy as np\n",
    "My favourite book is",
    "The largest planet in our solar system is",
    "To make a cup of tea, first",
    "The Eiffel Tower is located in",
    "Monday, Tuesday, Wednesday,",
    "Dear Sir or Madam,\n\nI am writing to",
    "The chemical symbol for gold is",
    "for i in range(10):\n",
    "The best way to learn a new language is",
    "Mount Everest is the highest",
    "Roses are red, violets are blue,",
    "The sun rises in the",
    "One, two, three, four,",
]


def render_chat(template: str, messages, bos: str, eos: str) -> str:
    # The same settings transformers uses for chat templates.
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=True, bos_token=bos, eos_token=eos
    )


def greedy(path: Path, tokens):
    """Greedy continuation from a fresh context, with the gap between the best and second-best
    logit at each step (a small gap means the reference itself sits on a near-tie)."""
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, n_batch=512, seed=0, verbose=False, logits_all=True)
    llm.eval(tokens)
    out, gaps = [], []
    while len(out) < GREEDY_TOKENS:
        logits = np.asarray(llm.scores[llm.n_tokens - 1])
        best, second = np.argsort(-logits)[:2]
        out.append(int(best))
        gaps.append(round(float(logits[best] - logits[second]), 4))
        llm.eval([int(best)])
    return out, gaps


def main(models_dir: Path, fixtures_dir: Path) -> None:
    models = [
        ("smollm2-135m", models_dir / "SmolLM2-135M-Instruct.Q4_1.gguf", "chat"),
        ("gemma3-270m", models_dir / "gemma-3-270m-q4_k_m.gguf", "completion"),
    ]
    for name, path, mode in models:
        llm = Llama(model_path=str(path), n_ctx=1024, n_threads=2, n_batch=512, seed=0, verbose=False)
        tokenizer = [
            {"text": t, "ids": [int(i) for i in llm.tokenize(t.encode(), add_bos=False, special=True)]}
            for t in TRICKY_TEXTS
        ]
        add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token") == "true"
        prompts = []
        if mode == "chat":
            template = llm.metadata["tokenizer.chat_template"]
            for q in QUESTIONS:
                messages = [{"role": "user", "content": q}]
                text = render_chat(template, messages, "", "")
                prompts.append({"messages": messages, "text": text})
        else:
            prompts = [{"text": t} for t in COMPLETIONS]
        for p in prompts:
            ids = [int(i) for i in llm.tokenize(p["text"].encode(), add_bos=add_bos, special=True)]
            p["ids"] = ids
            p["greedy"], p["gaps"] = greedy(path, ids)
        fixture = {
            "model": name,
            "file": path.name,
            "reference": f"llama.cpp via llama-cpp-python {llama_cpp.__version__}, greedy, 2 threads",
            "tokenizer": tokenizer,
            "prompts": prompts,
        }
        out = fixtures_dir / f"reference-{name}.json"
        out.write_text(json.dumps(fixture, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {out}: {len(tokenizer)} tokenizer cases, {len(prompts)} prompts")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
