"""The run steps of ``kailin run``, one module each (its reads, its step declaration, its
``run()``); :mod:`kailin.pipeline.stages.registry` lists them in order.

=====================  ==========================================  ============================
step                   does                                        writes (under RUN_DIR)
=====================  ==========================================  ============================
corpus                 ingest files / build the demo corpus,       corpus/full (+ selected/)
                       select by MeSH / years
workset                keep N abstracts to distil + M held out     corpus/work.parquet, ...
retriever              fine-tune the dense encoder on the corpus   models/retriever/
                       (opt.; after questions with pairs question)
index                  BM25 / dense / hybrid index of the corpus   index/
sft:<generator>        SFT each question generator                 models/<gen>-sft/
questions              every generator writes one question per     questions/ (shards)
                       abstract (record-level, executor)
score                  top-k contexts + MeSH score (executor)      scores/ (shards)
signal                 the document score's self-check             reports/signal_selfcheck.json
evaluator              m-KAILIN judge on the MeSH labels (opt.)    evaluator/
prefer                 chosen / rejected pairs + filter counts     preferences/
dpo                    DPO of the aligned generator                models/<gen>-dpo/
generator_eval         MeSH score before vs after DPO, bootstrap   reports/generator.json
steering               DPO arms vs controls, round after round     steering/, reports/steering.json
policy_questions       the aligned generator's questions           policy/
answers                teacher answers + grounding (executor)      answers/ (shards)
export                 CPT text, SFT records, triples, card        export/
downstream             continued pretraining of a downstream LM    models/downstream/
pubmedqa               PQA-L test, before and after training       reports/pubmedqa.json
=====================  ==========================================  ============================
"""

from kailin.pipeline.stages.registry import STEPS, pipeline_stages, run_config

__all__ = ["STEPS", "pipeline_stages", "run_config"]
