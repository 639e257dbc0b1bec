"""Question generation on CPU, side by side: transformers one-at-a-time and batched, llama.cpp.

Every mode generates for the same chat prompts (KAILIN instruction + "Question:" prefix over
real PubMedQA abstracts), greedy, no response cache, in one process, and reports completion
tokens per second, the ratio to transformers one-at-a-time, and how many completions have the
same text as transformers one-at-a-time (the reference). Modes:

- ``tf 1-at-a-time``: one request per ``generate()`` call (a naive loop);
- ``tf bs=N``: the transformers backend batched (left padding, sorted by length);
- ``llama.cpp ... bs=1`` / ``bs=N``: :class:`~kailin.llm.llamacpp_backend.LlamaCppBackend`
  in process on the packaged Q4_1 GGUF (and on every ``--gguf`` file, e.g. an F16 conversion
  of the dequantised checkpoint), one sequence at a time or N sequences per decode step.

Run:

    .venv/bin/python benchmarks/bench_generation.py --n 16 --batch-sizes 8,16 --threads 1

and without llama.cpp, float32 against bfloat16 on 64 prompts and two threads:

    .venv/bin/python benchmarks/bench_generation.py --n 64 --batch-sizes 16 --threads 2 --skip-llama-cpp
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

PQAL = Path(__file__).resolve().parents[1] / "src/kailin/data/pubmedqa/ori_pqal.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="number of abstracts")
    ap.add_argument("--batch-sizes", default="8,16", help="batched sizes to compare with 1")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--abstract-chars", type=int, default=600)
    ap.add_argument("--threads", type=int, default=1, help="torch / llama.cpp CPU threads")
    ap.add_argument("--gguf", action="append", default=[],
                    help="extra GGUF file for llama.cpp (same tokenizer as SmolLM2); repeatable")
    ap.add_argument("--skip-transformers-batched", action="store_true")
    ap.add_argument("--dtypes", default="bfloat16",
                    help="extra transformers dtypes to run batched beside float32 (comma list; "
                         "'' for none): bfloat16 uses AVX512-BF16/AMX where the CPU has them")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    args = ap.parse_args()

    import torch

    from kailin.generate.extract import extract_question
    from kailin.generate.prompts import DEFAULT_CHAT_PREFIX, PromptTemplate
    from kailin.llm.base import SamplingParams
    from kailin.llm.llamacpp_backend import LlamaCppBackend, llama_cpp_available
    from kailin.llm.packaged import smollm2_checkpoint, smollm2_gguf
    from kailin.llm.spec import BackendOptions, build_backend

    data = list(json.loads(PQAL.read_text()).items())[: args.n]
    tmpl = PromptTemplate(mode="chat", response_prefix=DEFAULT_CHAT_PREFIX,
                          max_abstract_chars=args.abstract_chars)
    reqs = [tmpl.render(k, v["QUESTION"], " ".join(v["CONTEXTS"])) for k, v in data]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    sizes = [int(x) for x in args.batch_sizes.split(",") if x]
    tf = build_backend("smollm2", BackendOptions(device="cpu", batch_size=1,
                                                 threads=args.threads))
    tf.load()
    tf.generate(reqs[:2], params)  # warm-up
    print(f"torch_threads={torch.get_num_threads()} llama_threads={args.threads} "
          f"cpus={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f} n={len(reqs)} "
          f"max_new_tokens={args.max_new_tokens}")

    def timed(fn) -> tuple[float, int, list[str]]:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        outs = fn()
        dt = time.perf_counter() - t0
        return dt, sum(o.completion_tokens or 0 for o in outs), [o.text for o in outs]

    def tf_run(bs: int):  # type: ignore[no-untyped-def]
        tf.batch_size = bs
        if bs == 1:  # one request per generate() call, as a naive loop would do
            return lambda: [tf.generate([r], params)[0] for r in reqs]
        return lambda: tf.generate(reqs, params)

    base_dt, base_tok, base_text = timed(tf_run(1))
    base_tps = base_tok / base_dt
    print(f"{'mode':<30}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}{'ratio':>8}{'same text':>11}"
          f"{'accepted':>10}")

    def row(name: str, dt: float, tok: int, text: list[str]) -> None:
        same = f"{sum(a == b for a, b in zip(text, base_text, strict=True))}/{len(reqs)}"
        ok = f"{sum(extract_question(t).ok for t in text)}/{len(reqs)}"
        print(f"{name:<30}{dt:>9.2f}{tok:>8}{tok / dt:>10.1f}{(tok / dt) / base_tps:>8.2f}"
              f"{same:>11}{ok:>10}", flush=True)

    row("tf 1-at-a-time", base_dt, base_tok, base_text)
    if not args.skip_transformers_batched:
        for bs in sizes:
            row(f"tf bs={bs}", *timed(tf_run(bs)))
    for dtype in [d for d in args.dtypes.split(",") if d]:
        other = build_backend("smollm2", BackendOptions(device="cpu", batch_size=sizes[-1],
                                                         threads=args.threads, dtype=dtype))
        other.load()
        other.generate(reqs[:2], params)  # warm-up
        for bs in sizes:
            other.batch_size = bs
            row(f"tf {dtype} bs={bs}", *timed(lambda o=other: o.generate(reqs, params)))
        other.close()
    if args.skip_llama_cpp:
        return
    if not llama_cpp_available():
        print("llama_cpp not importable: llama.cpp rows skipped")
        return
    tok_dir = str(smollm2_checkpoint())
    for gguf in [str(smollm2_gguf()), *args.gguf]:
        label = Path(gguf).stem.replace("SmolLM2-135M-Instruct.", "")[:14]
        for bs in [1, *sizes]:
            be = LlamaCppBackend(gguf, tokenizer=tok_dir, batch_size=bs, threads=args.threads)
            be.load()
            be.generate(reqs[:1], params)  # warm-up
            if bs == 1:
                row(f"llama.cpp {label} 1-at-a-time", *timed(
                    lambda be=be: [be.generate([r], params)[0] for r in reqs]))
            else:
                row(f"llama.cpp {label} bs={bs}", *timed(lambda be=be: be.generate(reqs, params)))
            be.close()


if __name__ == "__main__":
    main()
