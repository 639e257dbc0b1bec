"""The AdaptLLM peer method: raw abstracts turned into reading-comprehension texts.

Cheng, Huang & Wei, "Adapting Large Language Models via Reading Comprehension" (arXiv 2309.09530,
ICLR 2024) continue pretraining on each raw domain text followed by comprehension tasks mined
from the text itself with regular expressions: no LLM, no annotation. Implemented here from the
paper's description, for PubMed abstracts (``title`` + ``abstract``), with no MeSH:

* **summarization** (title <-> text): the title is the summary of the abstract, asked for after
  it ("What is a title for this ...?") or given before it ("Write an article titled ...");
* **text completion**: abstracts of at least 4 sentences are cut at a sentence boundary and the
  second part follows a continuation prompt (the text is not repeated);
* **word-to-text**: sentences holding at least 3 domain keywords are asked for from the keywords
  (or the keywords from the sentence); ``X is defined as Y`` gives a definition question;
* **natural language inference**: two consecutive sentences whose second opens with a
  connective ("Therefore," / "Thus," ... entail; "However," / "In contrast," ... contradict;
  "Moreover," / "In addition," ... neutral) become a premise/hypothesis question (answer
  Yes / No / Maybe) or a continuation with the connective;
* **commonsense reasoning**: the same "therefore" pairs as cause -> effect questions, and a
  sentence ``EFFECT because / due to / owing to CAUSE`` as an effect -> cause question;
* **paraphrase detection**: pairs joined by "In other words," / "Similarly," ... (support) or
  "However," / "In contrast," ... (contradict) become "Compose a sentence to support /
  contradict ...".

At most two examples per kind and record (the paper's cap). Tasks of a family stay together
(the paper's few-shot layout) after an intro line; templates, the cut and the order are drawn
from a generator seeded by the PMID (else the text), so a record always gives the same text.

Deviations, all from missing resources: the paper picks domain keywords as the tokens of a
domain SentencePiece vocabulary absent from the general one and longer than 10 characters; we
have neither tokenizer, so a keyword is a word of at least 10 letters that is not a common
English word (in abstracts these are mostly domain terms), and the three longest of a sentence
are asked for. The paper's connective patterns
require sentences without commas; abstracts rarely have such sentences, so commas are allowed
(sentences still need 50 characters). Each family uses a handful of templates of the paper's
kinds rather than its full lists.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from kailin.errors import InputError
from kailin.io import atomic_path, read_parquet, write_json_atomic, write_parquet_atomic

log = logging.getLogger(__name__)

DOMAIN = "biomedicine"
#: at most this many examples of one kind per record (the paper's ``max_subcategory_num``)
MAX_PER_KIND = 2
MIN_PAIR_CHARS = 50
MIN_KEYWORDS = 3
MAX_KEYWORD_SENTENCE_WORDS = 100
KEYWORD_MIN_LETTERS = 10

#: connectives that open the second sentence of a pair, by relation (the paper's verbalizers)
ENTAIL = ("Therefore", "Thus", "Accordingly", "Hence", "Consequently", "As a result",
          "For this reason")
CONTRADICT = ("However", "But", "In contrast", "On the contrary", "Conversely", "Nevertheless",
              "Whereas")
NEUTRAL = ("Moreover", "Furthermore", "In addition", "Additionally", "Also", "Secondly")
SIMILAR = ("In other words", "That is to say", "That is", "Namely", "i.e.", "Similarly",
           "Equally", "Likewise")
_CAUSE_RE = re.compile(r"^(?P<effect>.{30,}?)\s*,?\s+(?P<verb>because of|because|due to|owing to|"
                       r"on account of)\s+(?P<cause>[^.!?]{20,}?)\s*[.!?]$", re.IGNORECASE)
_DEFINITION_RE = re.compile(r"(?:^|(?<=\s))(?P<word>[A-Za-z][\w-]{9,})\s+(?:is|are)\s+defined\s+"
                            r"as\s+(?P<definition>[^.!?]{20,}[.!?])", re.IGNORECASE)
#: abbreviations after which a full stop does not end a sentence
_ABBREV_RE = re.compile(r"(?:\b(?:e\.g|i\.e|et al|vs|Fig|Figs|approx|ca|cf|resp|Dr|Mr|Mrs|Ms|St|"
                        r"Jr|no|vol|etc)|\b[A-Z])\.$", re.IGNORECASE)
_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z-]*[A-Za-z]")
#: long everyday words that are not domain keywords
_GENERAL_TEXT = """
additionally administration approximately association background characteristics
circumstances combination comparison comparisons conclusion conclusions consequently
considerable considerably consideration consistently contribution conventional correlation
demonstrated demonstrates description determination development differences different
difficulties documented effectiveness environment especially established evaluation
examination experience experienced experiences explanation furthermore generally
identified improvement improvements independent independently individual individuals
information institution institutions
interaction interactions interpretation introduction investigate investigated investigation
investigations measurement measurements nevertheless observation observations occurrence
participants participated participation particularly performance population populations
preliminary presentation previously probability procedure procedures professional
prospective prospectively questionnaire recommendations relationship relationships
representative requirement requirements respectively retrospective retrospectively
significance significant significantly simultaneously statistically subsequent subsequently
successfully sufficient throughout traditional understanding university
"""
_GENERAL_WORDS = frozenset(_GENERAL_TEXT.split())


@dataclass
class Task:
    """One mined comprehension example: ``question`` + " " + ``answer`` in the text.

    ``sources``: the sentences (or title) of the record it was mined from, verbatim."""

    family: str
    kind: str
    question: str
    answer: str
    sources: list[str] = field(default_factory=list)

    def render(self) -> str:
        return f"{self.question} {self.answer}"


@dataclass
class ReadingComprehension:
    """A record's reading-comprehension text: ``body`` (the raw text, possibly headed by a
    title-to-article prompt and cut by a completion prompt), then the summary question, then
    the other families' tasks after an intro line."""

    body: str
    tasks: list[Task]
    intro: str

    @property
    def text(self) -> str:
        summary = [t.render() for t in self.tasks if t.kind == "title_generation"]
        demos = _group(t for t in self.tasks if t.family not in ("summarize", "completion"))
        out = self.body
        if summary:
            out += "\n\n" + summary[0]
        if demos:
            out += "\n\n" + self.intro + "\n\n" + "\n\n".join(demos)
        return out


def _group(tasks: Iterable[Task]) -> list[str]:
    """Tasks rendered with the examples of one family together (the paper's few-shot layout)."""
    by_family: dict[str, list[str]] = {}
    for t in tasks:
        by_family.setdefault(t.family, []).append(t.render())
    return ["\n\n".join(v) for v in by_family.values()]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, each a verbatim substring (a full stop after a known abbreviation
    or a single capital does not end a sentence)."""
    text = text.strip()
    if not text:
        return []
    out: list[str] = []
    pos = 0
    for m in _SPLIT_RE.finditer(text):
        piece = text[pos:m.start()]
        if _ABBREV_RE.search(piece):
            continue
        out.append(piece.strip())
        pos = m.end()
    out.append(text[pos:].strip())
    return [s for s in out if s]


def _keywords(sentence: str) -> list[str]:
    seen: list[str] = []
    for w in _WORD_RE.findall(sentence):
        letters = sum(ch.isalpha() for ch in w)
        if letters >= KEYWORD_MIN_LETTERS and w.lower() not in _GENERAL_WORDS and w not in seen:
            seen.append(w)
    return seen


def _opening(sentence: str, connectives: Iterable[str]) -> tuple[str, str] | None:
    """``(connective, rest)`` when ``sentence`` opens with one of ``connectives`` and a comma
    (``But``/``Also`` may go without), else None."""
    for c in connectives:
        m = re.match(rf"{re.escape(c)}(\s*,\s+|\s+)(?P<rest>.+)$", sentence)
        if m and (m.group(1).strip() == "," or c in ("But", "Also", "Whereas")):
            rest = m.group("rest")
            return c, rest[:1].upper() + rest[1:]
    return None


def _seed(record: Mapping[str, Any]) -> str:
    pmid = record.get("pmid")
    if pmid is not None:
        return str(int(pmid))
    return str(zlib.crc32(str(record.get("abstract") or "").encode()))


_NLI_CLASSIFY = (
    ("Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the hypothesis? "
     "Yes, No or Maybe?", "{label}"),
    ("{premise}\nBased on the sentence above, can we infer that \"{hypothesis}\"?", "{label}"),
    ("Sentence 1: \"{premise}\"\nSentence 2: \"{hypothesis}\"\nIs sentence 2 true, based on "
     "sentence 1?", "{label}"),
    ("Sentence 1: \"{premise}\"\nSentence 2: \"{hypothesis}\"\nWhich word connects them best: "
     "Therefore, However, or Moreover?", "{connect}"),
)
_NLI_GENERATE = (("{premise} {connective},", "{hypothesis_lc}"),
                 ("Complete the following text: {premise} {connective},", "{hypothesis_lc}"))
_CAUSE_EFFECT = (("Question: What is the effect of \"{cause}\"? Answer:", "{effect}"),
                 ("{cause}\nWhat happens as a result?", "{effect}"),
                 ("Based on \"{cause}\", what is the outcome?", "{effect}"))
_EFFECT_CAUSE = (("Q: \"{effect}\" What is the cause? A:", "{cause}"),
                 ("What is a plausible reason for \"{effect}\"?", "{cause}"),
                 ("{effect} {verb}", "{cause}"))
_SUPPORT = (("Compose a sentence to support \"{s1}\".", "{s2}"),
            ("\"{s1}\" Generate a sentence that restates or extends the previous statement.",
             "{s2}"))
_CONTRADICT = (("Compose a sentence to contradict \"{s1}\".", "{s2}"),
               ("Given the sentence \"{s1}\", write a statement that contrasts with it.", "{s2}"))
_WORD2TEXT = (("Concepts: {words}\nWrite a sentence that includes all these {domain} words.",
               "{sentence}"),
              ("Keywords: {words}\nWhat is a sentence in the article that includes all these "
               "{domain} keywords?", "{sentence}"),
              ("Sentence: {sentence}\nWhat are the {domain} keywords in this sentence?",
               "{words}"))
_DEFINITION = (("What is the definition of {word}?", "{definition}"),
               ("Q: {word} is defined as? A:", "{definition}"))
_TITLE_QUESTION = ("What is a title for this {domain} article?",
                   "Write a short summary of the above {domain} text in one sentence.",
                   "What was this {domain} article about?")
_TITLE_PROMPT = ("Write a {domain} article titled \"{title}\".\n",
                 "Title: {title}\nWrite an article in the {domain} domain based on this title.\n")
_COMPLETION = ("How would you continue the article?", "What could be the next part?",
               "Complete the article:")
_INTRO = ("Answer some questions about the above {domain} article:",
          "Now answer these questions:",
          "Use evidence from the {domain} article to answer these questions:")


def _fill(rng: random.Random, templates: tuple[tuple[str, str], ...], **kw: str) -> tuple[str, str]:
    q, a = rng.choice(templates)
    return q.format(**kw), a.format(**kw)


def _pair_tasks(sents: list[str], rng: random.Random) -> list[Task]:
    """NLI, cause -> effect and paraphrase tasks from consecutive sentence pairs."""
    mined: dict[str, list[Task]] = {}

    def add(kind: str, task: Task) -> None:
        mined.setdefault(kind, []).append(task)

    for s1, s2 in itertools.pairwise(sents):
        if len(s1) < MIN_PAIR_CHARS:
            continue
        for label, conns in (("Entail", ENTAIL), ("Contradict", CONTRADICT), ("Neutral", NEUTRAL),
                             ("Similar", SIMILAR)):
            hit = _opening(s2, conns)
            if hit is None or len(hit[1]) < MIN_PAIR_CHARS:
                continue
            conn, hyp = hit
            src = [s1, s2]
            if label != "Similar":
                answer = {"Entail": "Yes", "Contradict": "No", "Neutral": "Maybe"}[label]
                connect = {"Entail": "Therefore", "Contradict": "However",
                           "Neutral": "Moreover"}[label]
                if rng.random() < 0.8:
                    q, a = _fill(rng, _NLI_CLASSIFY, premise=s1, hypothesis=hyp, label=answer,
                                 connect=connect)
                else:
                    q, a = _fill(rng, _NLI_GENERATE, premise=s1, connective=conn,
                                 hypothesis_lc=hyp[:1].lower() + hyp[1:])
                add(f"nli:{label}", Task("nli", label.lower(), q, a, src))
            if label == "Entail":
                q, a = _fill(rng, _CAUSE_EFFECT, cause=s1, effect=hyp)
                add("common:cause_effect", Task("commonsense", "cause_effect", q, a, src))
            if label in ("Similar", "Contradict"):
                tpl = _SUPPORT if label == "Similar" else _CONTRADICT
                q, a = _fill(rng, tpl, s1=s1, s2=hyp)
                add(f"para:{label}", Task("paraphrase", label.lower(), q, a, src))
            break
    for s in sents:
        m = _CAUSE_RE.match(s)
        if m:
            effect = m.group("effect").rstrip(" ,")
            q, a = _fill(rng, _EFFECT_CAUSE, effect=effect, verb=m.group("verb"),
                         cause=m.group("cause"))
            add("common:effect_cause", Task("commonsense", "effect_cause", q, a, [s]))
    out: list[Task] = []
    for tasks in mined.values():
        rng.shuffle(tasks)
        out.extend(tasks[:MAX_PER_KIND])
    return out


def _word_tasks(text: str, sents: list[str], rng: random.Random, domain: str) -> list[Task]:
    out: list[Task] = []
    for m in list(_DEFINITION_RE.finditer(text))[:MAX_PER_KIND]:
        q, a = _fill(rng, _DEFINITION, word=m.group("word"), definition=m.group("definition"))
        out.append(Task("word2text", "definition", q, a, [m.group(0)]))
    order = list(range(len(sents)))
    rng.shuffle(order)
    n = 0
    for i in order:
        s = sents[i]
        kws = _keywords(s)
        if len(kws) >= MIN_KEYWORDS and len(s.split()) <= MAX_KEYWORD_SENTENCE_WORDS:
            top = sorted(kws, key=lambda w: -len(w))[:MIN_KEYWORDS]  # the longest: most technical
            q, a = _fill(rng, _WORD2TEXT, words=", ".join(w for w in kws if w in top), sentence=s,
                         domain=domain)
            out.append(Task("word2text", "word2text", q, a, [s]))
            n += 1
            if n == MAX_PER_KIND:
                break
    return out


def mine(record: Mapping[str, Any], domain: str = DOMAIN) -> ReadingComprehension:
    """The reading-comprehension text of one record (``title``, ``abstract``, optional
    ``pmid`` for the seed), with its mined tasks."""
    title = " ".join(str(record.get("title") or "").split())
    abstract = str(record.get("abstract") or "").strip()
    seed = _seed(record)
    rng = random.Random(f"{seed}:templates")
    sents = split_sentences(abstract)
    tasks: list[Task] = []
    body = abstract
    if len(sents) >= 4:  # text completion: the abstract cut at a sentence boundary
        cut = random.Random(f"{seed}:cut").randint(1, len(sents) - 1)
        first, second = " ".join(sents[:cut]), " ".join(sents[cut:])
        prompt = rng.choice(_COMPLETION)
        body = f"{first}\n\n{prompt} {second}"
        tasks.append(Task("completion", "text_completion", prompt, second, sents[cut:]))
    if len(title.split()) >= 3:
        if rng.random() < 0.5:
            q = rng.choice(_TITLE_QUESTION).format(domain=domain)
            tasks.append(Task("summarize", "title_generation", q, title, [title]))
        else:
            prompt = rng.choice(_TITLE_PROMPT).format(domain=domain, title=title)
            body = prompt + body
            tasks.append(Task("summarize", "article_from_title", prompt.strip(), abstract,
                              [title]))
    demos = _word_tasks(abstract, sents, rng, domain) + _pair_tasks(sents, rng)
    families = list(dict.fromkeys(t.family for t in demos))
    random.Random(f"{seed}:order").shuffle(families)
    demos.sort(key=lambda t: families.index(t.family))
    intro = random.Random(f"{seed}:intro").choice(_INTRO).format(domain=domain)
    return ReadingComprehension(body, tasks + demos, intro)


def reading_comprehension(record: Mapping[str, Any], domain: str = DOMAIN) -> str:
    """The AdaptLLM training text of one record: its raw text with the comprehension tasks
    mined from it (see the module docstring)."""
    return mine(record, domain).text


# -- the table ------------------------------------------------------------------------------
def adaptllm_table(records: Iterable[Mapping[str, Any]], domain: str = DOMAIN
                   ) -> tuple[pa.Table, dict[str, Any]]:
    """A CPT table (``pmid``, ``text``) of reading-comprehension texts, and its counts: records,
    skipped (no abstract), records without any task, tasks per family and kind."""
    pmids, texts = [], []
    kinds: Counter[str] = Counter()
    skipped = no_task = 0
    for r in records:
        if not str(r.get("abstract") or "").strip():
            skipped += 1
            continue
        rc = mine(r, domain)
        if not rc.tasks:
            no_task += 1
        kinds.update(f"{t.family}.{t.kind}" for t in rc.tasks)
        pmids.append(int(r["pmid"]) if r.get("pmid") is not None else None)
        texts.append(rc.text)
    table = pa.table({"pmid": pa.array(pmids, pa.int64()), "text": pa.array(texts, pa.string())})
    stats = {"records": len(texts), "skipped_no_abstract": skipped, "records_without_task": no_task,
             "tasks": sum(kinds.values()), "tasks_by_kind": dict(sorted(kinds.items())),
             "domain": domain}
    return table, stats


def _read_table(path: Path) -> pa.Table:
    if path.is_dir() and (path / "cpt").is_dir():
        return read_parquet(path / "cpt")
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{i}: not JSON ({exc})") from None
        return pa.Table.from_pylist(rows)
    try:
        return read_parquet(path)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: {exc}") from None


def source_documents(source: str | os.PathLike[str] | pa.Table,
                     corpus_dir: str | os.PathLike[str] | None = None,
                     with_contexts: bool = False) -> list[dict[str, Any]]:
    """The raw documents an AdaptLLM arm reads: ``pmid``, ``title``, ``abstract``.

    ``source``: a ``kailin dataset export`` directory (its ``cpt`` PMIDs), or a Parquet/JSONL
    file or directory with ``pmid`` (and ``title``/``abstract``, else looked up in
    ``corpus_dir``). ``with_contexts`` adds the ``context_pmids`` of each row as documents of
    their own (each PMID once, in order of first appearance)."""
    table = source if isinstance(source, pa.Table) else _read_table(Path(source))
    if "pmid" not in table.column_names:
        raise InputError(f"{source}: lacks the column 'pmid' (columns: "
                         f"{', '.join(table.column_names)})")
    rows = table.to_pylist()
    order: list[int] = []
    for r in rows:
        ids = [r["pmid"]] + (list(r.get("context_pmids") or []) if with_contexts else [])
        order.extend(int(p) for p in ids if p is not None)
    if with_contexts and "context_pmids" not in table.column_names:
        raise InputError(f"{source}: --with-contexts needs a 'context_pmids' column (give the "
                         "scores or answers table)")
    order = list(dict.fromkeys(order))
    have = ({int(r["pmid"]): r for r in rows if r.get("pmid") is not None}
            if "abstract" in table.column_names else {})
    missing = [p for p in order if p not in have]
    docs: dict[int, Mapping[str, Any]] = dict(have)
    if missing:
        if corpus_dir is None:
            raise InputError(f"{source}: {len(missing)} PMID(s) without title/abstract; give "
                             "--corpus so they can be looked up")
        from kailin.dataset.records import fetch_documents

        docs.update(fetch_documents(corpus_dir, missing))
        absent = [p for p in missing if p not in docs]
        if absent:
            log.warning("%d PMID(s) not in the corpus %s were skipped", len(absent), corpus_dir)
    return [{"pmid": p, "title": docs[p].get("title") or "",
             "abstract": docs[p].get("abstract") or ""} for p in order if p in docs]


def write_adaptllm(records: Iterable[Mapping[str, Any]], out_dir: str | os.PathLike[str],
                   domain: str = DOMAIN, provenance: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """Write ``OUT/cpt/train.parquet`` and ``.jsonl`` (``pmid``, ``text``, like the export's
    cpt config, so ``kailin train cpt OUT`` reads it) and ``OUT/adaptllm.json`` (the counts)."""
    out = Path(out_dir)
    table, stats = adaptllm_table(records, domain)
    if not table.num_rows:
        raise InputError(f"{out}: no record with an abstract to write")
    write_parquet_atomic(table, out / "cpt" / "train.parquet")
    with atomic_path(out / "cpt" / "train.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    stats = {"method": "AdaptLLM reading comprehension (arXiv 2309.09530)", **stats,
             "files": ["cpt/train.parquet", "cpt/train.jsonl"], **(provenance or {})}
    write_json_atomic(out / "adaptllm.json", stats)
    return stats
