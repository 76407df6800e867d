"""Data: vocabularies, readers and batching.

- ``rnnkit.data.vocab``: :class:`Vocabulary` (specials, size and frequency limits, JSON).
- ``rnnkit.data.text``: UTF-8 text files as character or word ids.
- ``rnnkit.data.lm``: language-model streams and truncated-BPTT windows.
"""

from rnnkit.data.vocab import BOS, EOS, PAD, UNK, Vocabulary

__all__ = ["BOS", "EOS", "PAD", "UNK", "Vocabulary"]
