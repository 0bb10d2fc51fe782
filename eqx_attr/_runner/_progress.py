"""The progress bar (tqdm, imported only when a bar is shown)."""

from __future__ import annotations

from typing import Any


class _NoBar:
    def update(self, n: int) -> None:
        del n

    def close(self) -> None:
        """Nothing to close: no bar was shown."""


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar counting examples (its rate reads `ex/s`), or a silent stand-in."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", dynamic_ncols=True, smoothing=0.1)
