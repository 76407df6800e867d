"""Translation metrics: corpus BLEU and chrF, computed by sacrebleu on detokenised text.

Both take the system's output and one reference per sentence as plain (detokenised) strings,
exactly as ``sacrebleu REF -i HYP -m bleu chrf`` reads them from files, with sacrebleu's
defaults (BLEU: 13a tokenisation, exponential smoothing; chrF: character 6-grams, beta 2), so
the numbers equal its command line's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rnnkit.errors import RnnkitError


@dataclass
class TranslationScores:
    """``bleu`` and ``chrf`` in [0, 100]; ``signature``: sacrebleu's signatures of both."""

    bleu: float
    chrf: float
    sentences: int
    signature: str = ""

    def to_dict(self) -> dict:
        return {"bleu": self.bleu, "chrf": self.chrf, "sentences": self.sentences,
                "signature": self.signature}


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise RnnkitError('BLEU and chrF need sacrebleu: pip install -e ".[translate]"') from None
    return sacrebleu


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0-100) of detokenised ``hypotheses`` against one reference each."""
    return translation_scores(hypotheses, references).bleu


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100) of ``hypotheses`` against one reference each."""
    return translation_scores(hypotheses, references).chrf


def translation_scores(hypotheses: Sequence[str], references: Sequence[str]
                       ) -> TranslationScores:
    """BLEU and chrF of ``hypotheses`` against ``references`` (same number of lines)."""
    if len(hypotheses) != len(references):
        raise RnnkitError(f"hypotheses and references must have the same number of lines, got "
                          f"{len(hypotheses)} and {len(references)}")
    sb = _sacrebleu()
    hyps, refs = list(hypotheses), [list(references)]
    b = sb.metrics.BLEU()
    c = sb.metrics.CHRF()
    bs, cs = b.corpus_score(hyps, refs), c.corpus_score(hyps, refs)
    return TranslationScores(float(bs.score), float(cs.score), len(hyps),
                             f"{b.get_signature()} | {c.get_signature()}")
