"""kailin: MeSH-knowledge-hierarchy guided distillation of biomedical training data."""

__version__ = "0.1.0"
