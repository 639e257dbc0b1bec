"""Held-out perplexity: the windows, the texts table, and `kailin evaluate perplexity` with
SmolLM2 on a tiny real table (PubMedQA contexts), checked against a direct forward pass."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from kailin.cli.evaluate import app as evaluate_app
from kailin.errors import InputError
from kailin.evaluate import pubmedqa as pqa
from kailin.evaluate.perplexity import load_texts, per_text_path, windows
from kailin.evaluate.stats import load_items, paired_delta

app = typer.Typer()
app.add_typer(evaluate_app, name="evaluate")


def test_windows_cover_every_token_once() -> None:
    # [prefix] + 10 tokens, 4 per pass, moving 2: scored spans 1-3, 4-5, 6-7, 8-9, 10
    assert windows(10, 4, 2) == [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2), (7, 11, 1)]
    assert windows(10, 4, 2, truncate=True) == [(0, 4, 3)]
    assert windows(2, 8) == [(0, 3, 2)]
    for n, m, s in ((100, 16, 8), (37, 10, 9), (5, 2, 1)):
        ws = windows(n, m, s)
        assert sum(k for _, _, k in ws) == n
        assert all(b - a <= m and k < b - a for a, b, k in ws)
    with pytest.raises(InputError, match="stride"):
        windows(10, 4, 4)


def test_load_texts(tmp_path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"pmid": 5, "text": "a"}\n{"pmid": 7, "text": "b"}\n')
    t = load_texts(f)
    assert t.column("id").to_pylist() == ["5", "7"] and t.column("pmid").to_pylist() == [5, 7]
    assert load_texts(f, limit=1).num_rows == 1
    f.write_text('{"body": "a"}\n')
    with pytest.raises(InputError, match="no 'text' column"):
        load_texts(f)
    f.write_text('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n')
    with pytest.raises(InputError, match="duplicate ids x"):
        load_texts(f)
    assert per_text_path(tmp_path / "ppl.json") == tmp_path / "ppl.per_text.parquet"


@pytest.mark.slow
def test_perplexity_command_on_smollm2(tmp_path) -> None:
    pytest.importorskip("transformers")
    import torch

    from kailin.evaluate.perplexity import TextScorer, evaluate_perplexity
    from kailin.train.common import load_model, load_tokenizer

    # a tiny real table: PubMedQA questions and the start of a context (~70 tokens: windows)
    items = pqa.test_items(3)
    texts = [items[0].question, items[1].question + " " + items[1].contexts[0][:200],
             items[2].question]
    table = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"pmid": [int(it.pmid) for it in items], "text": texts}), table)
    out = tmp_path / "w32.json"
    r = CliRunner().invoke(app, ["evaluate", "perplexity", "--model", "smollm2", "--texts",
                                 str(table), "--json", str(out), "--n-boot", "200", "--quiet",
                                 "--max-length", "32", "--batch-size", "3"])
    assert r.exit_code == 0, r.output
    assert "mean NLL" in r.output
    w = json.loads(out.read_text())
    tok = load_tokenizer("smollm2")
    n_tok = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert n_tok[0] < 31 < n_tok[1] < 96  # short texts in one window, the long one in several
    for key in ("mean_nll", "ci_low", "ci_high", "tokens", "n", "perplexity", "windows",
                "truncated_texts", "tokens_dropped", "per_text_file", "per_text_mean_nll"):
        assert key in w
    assert w["n"] == 3 and w["tokens"] == sum(n_tok) and w["truncated_texts"] == 0
    assert w["windows"] > 3 and w["stride"] == 16 and w["long_texts"] == "window"
    assert w["ci_low"] < w["mean_nll"] < w["ci_high"] and 0 < w["mean_nll"] < 15
    assert w["per_text_file"] == str(tmp_path / "w32.per_text.parquet")
    rows = load_items(w["per_text_file"])
    assert [r["id"] for r in rows] == [it.pmid for it in items]
    assert [r["tokens"] for r in rows] == n_tok
    assert w["mean_nll"] == pytest.approx(sum(r["nll_sum"] for r in rows) / sum(n_tok))
    # the short text, by hand: one forward pass over [prefix] + tokens
    model = load_model("smollm2")
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[prefix] + tok(texts[0], add_special_tokens=False)["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1].float()
    want = float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
    assert rows[0]["nll_sum"] == pytest.approx(want, rel=2e-3)

    def run(name: str, **kw) -> dict:
        sc = TextScorer(model, tok, **kw)
        return evaluate_perplexity("smollm2", table, n_boot=200, json_out=tmp_path / name,
                                   progress=False, scorer=sc)

    # batching does not change the figures
    rows_b1 = load_items(run("b1.json", max_length=32, batch_size=1)["per_text_file"])
    for a, b in zip(rows, rows_b1, strict=True):
        assert a["nll_sum"] == pytest.approx(b["nll_sum"], rel=2e-3)
    # truncation: the long text loses all but its first 31 tokens, counted
    t = run("t32.json", max_length=32, truncate=True)
    assert t["truncated_texts"] == 1 and t["windows"] == 3 and t["long_texts"] == "truncate"
    assert t["tokens"] == n_tok[0] + 31 + n_tok[2]
    assert t["tokens_dropped"] == sum(n_tok) - t["tokens"]
    # paired deltas from the per-text NLLs: a model against itself is 0; more context helps
    same = paired_delta(rows, rows_b1, "mean_nll", n_boot=200)
    assert abs(same["delta"]) < 1e-3 and same["n"] == 3
    long_ctx = load_items(run("w96.json", max_length=96, batch_size=3)["per_text_file"])
    d = paired_delta(long_ctx, rows, "mean_nll", n_boot=200)
    assert d["n"] == 3 and d["delta"] < 0 and d["mde"] >= 0
    assert long_ctx[0]["nll_sum"] == pytest.approx(rows[0]["nll_sum"], rel=2e-3)


def test_load_texts_json_list(tmp_path) -> None:
    f = tmp_path / "t.json"
    f.write_text('[{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]')
    assert load_texts(f).column("id").to_pylist() == ["a", "b"]
    f.write_text('[1, 2]')
    with pytest.raises(InputError, match="one JSON object per row"):
        load_texts(f)
