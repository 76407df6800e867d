"""Models built on rnnkit's layers: each with a config dataclass saved beside its weights."""

from rnnkit.models.classifier import Classifier, Encoder, EncoderConfig
from rnnkit.models.conditional import ConditionalLM, ConditionalLMConfig
from rnnkit.models.lm import LanguageModel, LMConfig, LMOutput
from rnnkit.models.seq2seq import Seq2Seq, Seq2SeqConfig, Seq2SeqOutput
from rnnkit.models.tagger import Tagger, TaggerBatch, TaggerConfig

__all__ = [
    "LMConfig",
    "LMOutput",
    "LanguageModel",
    "Classifier",
    "ConditionalLM",
    "ConditionalLMConfig",
    "Encoder",
    "EncoderConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "Seq2SeqOutput",
    "Tagger",
    "TaggerBatch",
    "TaggerConfig",
]
