"""The progress bar of a training run, on stderr.

A run bounded by steps or epochs counts steps out of its step budget; a run bounded by time
alone (``--max-minutes``) counts seconds out of its time budget, so that its bar has a total
and shows the time left (its step count is not known in advance).
"""

from __future__ import annotations

from tqdm.auto import tqdm


class Progress:
    """Steps out of ``total_steps``, or when ``max_seconds`` is given, seconds out of it.

    Args:
        total_steps: the step budget (None: unknown, a bar with no total).
        max_seconds: the time budget of a run bounded by time alone, else None.
        step, seconds: where a resumed run starts.
        enabled: False draws nothing.
    """

    def __init__(self, total_steps: int | None, max_seconds: float | None, step: int,
                 seconds: float, enabled: bool = True) -> None:
        self.timed = max_seconds is not None
        if self.timed:
            self.bar = tqdm(total=round(max_seconds), initial=min(round(seconds),
                                                                  round(max_seconds)),
                            unit="s", disable=not enabled, dynamic_ncols=True, leave=True,
                            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s "
                                       "[{remaining} left{postfix}]")
        else:
            self.bar = tqdm(total=total_steps, initial=step, unit="step",
                            disable=not enabled, dynamic_ncols=True, leave=True)
        self.step = step

    def update(self, step: int, seconds: float) -> None:
        """The run is at ``step`` after ``seconds`` of training (earlier sessions included)."""
        if self.timed:
            self.bar.update(max(0, min(round(seconds), self.bar.total) - self.bar.n))
        else:
            self.bar.update(step - self.step)
        self.step = step

    def set_postfix(self, values: dict[str, str]) -> None:
        if self.timed:
            values = {"step": str(self.step), **values}
        self.bar.set_postfix(values, refresh=False)

    def close(self) -> None:
        self.bar.close()
