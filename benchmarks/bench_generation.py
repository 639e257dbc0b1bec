"""Batched vs one-at-a-time question generation on CPU with the packaged SmolLM2-135M-Instruct.

Both sides generate for the same chat prompts (KAILIN instruction + "Question:" prefix over real
PubMedQA abstracts), greedy, no response cache, in one process, and report completion tokens per
second and the speed-up ratio. Run:

    .venv/bin/python benchmarks/bench_generation.py --n 16 --batch-sizes 4,8,16 --threads 2
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
    ap.add_argument("--batch-sizes", default="4,8,16", help="batched sizes to compare with 1")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--abstract-chars", type=int, default=600)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from kailin.generate.prompts import DEFAULT_CHAT_PREFIX, PromptTemplate
    from kailin.llm.base import SamplingParams
    from kailin.llm.spec import BackendOptions, build_backend

    data = list(json.loads(PQAL.read_text()).items())[: args.n]
    tmpl = PromptTemplate(mode="chat", response_prefix=DEFAULT_CHAT_PREFIX,
                          max_abstract_chars=args.abstract_chars)
    reqs = [tmpl.render(k, v["QUESTION"], " ".join(v["CONTEXTS"])) for k, v in data]
    params = SamplingParams(max_new_tokens=args.max_new_tokens)
    backend = build_backend("smollm2", BackendOptions(device=args.device, batch_size=1,
                                                      threads=args.threads))
    backend.load()
    backend.generate(reqs[:2], params)  # warm-up
    print(f"device={args.device} torch_threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()} load_avg={os.getloadavg()[0]:.1f} n={len(reqs)} "
          f"max_new_tokens={args.max_new_tokens}")

    def run(bs: int) -> tuple[float, int, list[str]]:
        backend.batch_size = bs
        t0 = time.perf_counter()
        if bs == 1:  # one request per generate() call, as a naive loop would do
            outs = [backend.generate([r], params)[0] for r in reqs]
        else:
            outs = backend.generate(reqs, params)
        dt = time.perf_counter() - t0
        return dt, sum(o.completion_tokens or 0 for o in outs), [o.text for o in outs]

    base_dt, base_tok, base_text = run(1)
    base_tps = base_tok / base_dt
    print(f"{'mode':<18}{'seconds':>9}{'tokens':>8}{'tokens/s':>10}{'ratio':>8}{'same text':>11}")
    print(f"{'one-at-a-time':<18}{base_dt:>9.2f}{base_tok:>8}{base_tps:>10.1f}{1.0:>8.2f}"
          f"{'-':>11}")
    for bs in [int(x) for x in args.batch_sizes.split(",") if x]:
        dt, tok, text = run(bs)
        same = sum(a == b for a, b in zip(text, base_text, strict=True))
        print(f"{f'batched bs={bs}':<18}{dt:>9.2f}{tok:>8}{tok / dt:>10.1f}"
              f"{(tok / dt) / base_tps:>8.2f}{f'{same}/{len(reqs)}':>11}")


if __name__ == "__main__":
    main()
