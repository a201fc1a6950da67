"""Times llama.cpp (through llama-cpp-python) the way `hearth bench` times hearth: pp = one forward
pass over N random tokens, tg = N tokens decoded one at a time; mean ± sd over repetitions after a
warm-up. Prints JSON lines. Usage: bench_llama_cpp.py MODEL.gguf THREADS [PP] [TG] [REPS]"""
import json
import random
import statistics
import sys
import time

from llama_cpp import Llama


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    pp, tg, reps = (int(a) for a in (sys.argv[3:6] + ["512", "128", "5"][len(sys.argv[3:6]):]))
    llm = Llama(model_path=path, n_ctx=pp + tg + 8, n_threads=threads, n_threads_batch=threads, n_batch=pp, n_ubatch=pp, verbose=False)
    vocab = llm.n_vocab()
    rng = random.Random(0)
    for test, n in (("pp", pp), ("tg", tg)):
        if n == 0:
            continue
        rates = []
        for rep in range(reps + 1):
            llm.reset()
            llm._ctx.kv_cache_clear()
            tokens = [rng.randrange(vocab) for _ in range(n)]
            start = time.perf_counter()
            if test == "pp":
                llm.eval(tokens)
            else:
                for t in tokens:
                    llm.eval([t])
            rate = n / (time.perf_counter() - start)
            if rep > 0:  # the first run warms up
                rates.append(rate)
        sd = statistics.stdev(rates) if len(rates) > 1 else 0.0
        print(json.dumps({"engine": "llama.cpp", "threads": threads, "test": f"{test}{n}", "tokens_per_s": statistics.mean(rates), "sd": sd}))


if __name__ == "__main__":
    main()
