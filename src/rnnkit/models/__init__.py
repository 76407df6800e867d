"""Models built on rnnkit's layers: each with a config dataclass saved beside its weights."""

from rnnkit.models.lm import LanguageModel, LMConfig, LMOutput
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig, Seq2SeqOutput

__all__ = [
    "LMConfig",
    "LMOutput",
    "LanguageModel",
    "Seq2Seq",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
]
