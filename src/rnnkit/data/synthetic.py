"""Synthetic long-range tasks: the adding problem, the copy (memory) task, number agreement.

Each generator is deterministic given its ``seed`` (its own ``torch.Generator``; the global
random state is untouched) and returns a :class:`SyntheticTask`. Token tasks give one target
per step with ``IGNORE`` (-100, cross-entropy's ``ignore_index``) where nothing is asked, so
every task trains with the same per-step loss; ``targets[mask]`` are the positions that count.

- :func:`adding_problem` (Hochreiter and Schmidhuber 1997): a sequence of (value, marker)
  pairs, two markers; the target at the last step is the sum of the two marked values.
- :func:`copy_task`: ``length`` symbols, then blanks, then a "go" marker; the model must output
  the symbols ``delay`` steps after it saw each of them, with blanks (or random distractor
  symbols) in between.
- :func:`agreement_task`: the notes' "The cat, which already ate ..., was full": a singular or
  plural subject, ``distance - 1`` distractor words (among them attractor nouns of either
  number), and at the last step the verb must agree with the subject: ``was`` or ``were``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from rnnkit.data.padding import IGNORE_INDEX as IGNORE

# number agreement vocabulary: specials, subjects (singular then plural), fillers, verbs
SINGULAR = ("cat", "dog", "writer", "girl", "boy", "bird")
PLURAL = ("cats", "dogs", "writers", "girls", "boys", "birds")
FILLERS = ("which", "already", "ate", "the", "a", "fish", "of", "quickly", "near", "big",
           "old", "and", "saw", "with", "very", "red")
VERBS = ("was", "were")
AGREEMENT_VOCAB = ("<pad>", "<query>", *SINGULAR, *PLURAL, *FILLERS, *VERBS)


@dataclass
class SyntheticTask:
    """A batch of a synthetic task.

    Attributes:
        name: ``"adding"``, ``"copy"`` or ``"agreement"``.
        inputs: (N, T, 2) float for the adding problem; (N, T) int64 token ids otherwise.
        targets: (N,) float sums for the adding problem (the answer at the last step);
            (N, T) int64 class ids otherwise, ``IGNORE`` where nothing is asked.
        input_size: features per step (2), or the number of token ids.
        num_classes: output classes per step (0 for the regression of the adding problem).
        horizon: the distance, in steps, between the information and where it is needed.
        vocab: the token strings (agreement), or ``None``.
    """

    name: str
    inputs: Tensor
    targets: Tensor
    input_size: int
    num_classes: int
    horizon: int
    vocab: tuple[str, ...] | None = None

    @property
    def mask(self) -> Tensor:
        """(N, T) bool: the steps with a target (for the adding problem, the last step)."""
        if self.name == "adding":
            m = torch.zeros(self.inputs.shape[:2], dtype=torch.bool)
            m[:, -1] = True
            return m
        return self.targets != IGNORE

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def batch(self, index: Tensor | slice) -> SyntheticTask:
        """The examples at ``index`` as a task of their own."""
        return SyntheticTask(self.name, self.inputs[index], self.targets[index],
                             self.input_size, self.num_classes, self.horizon, self.vocab)

    def chance(self) -> float:
        """Accuracy of guessing (classification), or the mean squared error of always
        answering the mean target (adding problem: the variance of the sum)."""
        if self.name == "adding":
            return 1.0 / 6.0  # Var(U1 + U2) = 2 / 12
        if self.name == "agreement":
            return 0.5
        return 1.0 / (self.num_classes - 2)


def _positive(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def adding_problem(n: int, length: int, *, seed: int = 0) -> SyntheticTask:
    """The adding problem: ``inputs[:, t] = (value, marker)``, values ~ U(0, 1); one marker in
    the first half, one in the second; the target is the sum of the two marked values.

    Returns inputs (n, length, 2) float32 and targets (n,) float32; ``horizon`` = length."""
    _positive("n", n)
    _positive("length", length, 2)
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=g)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, length, (n,), generator=g)
    markers = torch.zeros(n, length)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    targets = values[rows, first] + values[rows, second]
    return SyntheticTask("adding", torch.stack([values, markers], -1), targets, 2, 0, length)


def copy_task(n: int, delay: int, *, length: int = 1, num_symbols: int = 8,
              distractors: bool = False, seed: int = 0) -> SyntheticTask:
    """The copy (memory) task with a configurable delay.

    Token ids: 0 blank, 1 "go", 2 .. num_symbols + 1 the symbols. Positions 0 .. length-1 hold
    the symbols to remember; position ``delay - 1`` holds "go"; the model must output symbol i
    at position ``i + delay`` (T = delay + length). Every other position is blank, or with
    ``distractors=True`` a random symbol (so the model must ignore symbols seen later).
    Targets are ``IGNORE`` except at the ``length`` recall positions.
    """
    _positive("n", n)
    _positive("length", length)
    _positive("delay", delay, length + 1)
    _positive("num_symbols", num_symbols, 2)
    g = torch.Generator().manual_seed(seed)
    T = delay + length
    symbols = torch.randint(2, num_symbols + 2, (n, length), generator=g)
    if distractors:
        inputs = torch.randint(2, num_symbols + 2, (n, T), generator=g)
    else:
        inputs = torch.zeros(n, T, dtype=torch.long)
    inputs[:, :length] = symbols
    inputs[:, delay - 1] = 1
    inputs[:, delay:] = 0
    targets = torch.full((n, T), IGNORE, dtype=torch.long)
    targets[:, delay:] = symbols
    return SyntheticTask("copy", inputs, targets, num_symbols + 2, num_symbols + 2, delay)


def agreement_task(n: int, distance: int, *, attractors: float = 0.3,
                   seed: int = 0) -> SyntheticTask:
    """Number agreement across ``distance`` steps (see :data:`AGREEMENT_VOCAB`).

    Position 0 is the subject (singular or plural with probability 1/2), positions
    1 .. distance-1 are distractors (each an attractor noun of random number with probability
    ``attractors``, else a filler word), position ``distance`` is ``<query>`` and its target is
    the verb that agrees with the subject (``was`` / ``were``). T = distance + 1.
    """
    _positive("n", n)
    _positive("distance", distance)
    if not 0.0 <= attractors <= 1.0:
        raise ValueError(f"attractors must lie in [0, 1], got {attractors!r}")
    vocab = AGREEMENT_VOCAB
    ids = {w: i for i, w in enumerate(vocab)}
    sing = torch.tensor([ids[w] for w in SINGULAR])
    plur = torch.tensor([ids[w] for w in PLURAL])
    nouns = torch.cat([sing, plur])
    fill = torch.tensor([ids[w] for w in FILLERS])
    g = torch.Generator().manual_seed(seed)
    T = distance + 1
    plural = torch.rand(n, generator=g) < 0.5
    subject = torch.where(plural, plur[torch.randint(0, len(plur), (n,), generator=g)],
                          sing[torch.randint(0, len(sing), (n,), generator=g)])
    is_attractor = torch.rand(n, T, generator=g) < attractors
    attractor = nouns[torch.randint(0, len(nouns), (n, T), generator=g)]
    filler = fill[torch.randint(0, len(fill), (n, T), generator=g)]
    inputs = torch.where(is_attractor, attractor, filler)
    inputs[:, 0] = subject
    inputs[:, -1] = ids["<query>"]
    targets = torch.full((n, T), IGNORE, dtype=torch.long)
    targets[:, -1] = torch.where(plural, ids["were"], ids["was"])
    return SyntheticTask("agreement", inputs, targets, len(vocab), len(vocab), distance, vocab)


TASKS = {"adding": adding_problem, "copy": copy_task, "agreement": agreement_task}


def make_task(name: str, n: int, horizon: int, *, seed: int = 0, **options: object
              ) -> SyntheticTask:
    """Build a task by name (``"adding"``, ``"copy"``, ``"agreement"``) with ``horizon`` as
    its length, delay or distance."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {name!r}")
    return TASKS[name](n, horizon, seed=seed, **options)
