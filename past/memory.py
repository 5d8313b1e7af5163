"""Peak resident memory of a training stage, for its manifest and MLflow metrics (issue 14)."""

from __future__ import annotations

import threading


class PeakRSS:
    """Peak resident memory of this process while the block runs, sampled every 0.2 s by a thread (the
    process-lifetime peak of getrusage would carry an earlier stage's peak into the next)."""

    def __init__(self, every_s: float = 0.2) -> None:
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while True:
            self.peak = max(self.peak, proc.memory_info().rss)
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> "PeakRSS":
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_gb(self) -> float:
        return round(self.peak / 2**30, 3)
