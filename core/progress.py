"""Epoch progress for the command line (``fit`` callbacks): a tqdm bar, or one log line per epoch."""

from __future__ import annotations

import logging
from typing import IO, TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # core.train is torch: the bar needs only its report type
    from core.train import EpochReport


def epoch_fields(report: EpochReport, monitor: str) -> dict[str, str]:
    """What a progress display shows of an epoch: mean losses, the validation metric, best epoch and ETA."""
    fields = {k: f"{v:.4g}" for k, v in report.losses.items()}
    if monitor in report.valid:
        fields[monitor] = f"{report.valid[monitor]:.4f}"
    if report.best is not None:
        fields["best"] = f"{report.best:.4f}@{report.best_epoch}"
    fields["eta"] = f"{report.eta_seconds:.0f}s"
    return fields


class ProgressBar:
    """Draws one bar per ``fit`` run: epoch k/N, mean losses, validation metric, best epoch and ETA."""

    def __init__(self, desc: str = "train", monitor: str = "ndcg@10", file: IO[str] | None = None,
                 leave: bool = True) -> None:
        self.desc = desc
        self.monitor = monitor
        self.file = file
        self.leave = leave
        self._bar: tqdm | None = None

    def on_epoch_end(self, report: EpochReport) -> None:
        if self._bar is None:
            self._bar = tqdm(total=report.max_epochs, desc=self.desc, unit="ep", file=self.file,
                             leave=self.leave, dynamic_ncols=True)
            self._bar.update(report.epoch - 1)  # a resumed run starts part-way
        self._bar.set_postfix(epoch_fields(report, self.monitor), refresh=False)
        self._bar.update(1)
        if report.stopped or report.epoch >= report.max_epochs:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class EpochLog:
    """One log line per epoch (for runs without a terminal, e.g. a sweep's log files): the same fields as
    ``ProgressBar``."""

    def __init__(self, desc: str = "train", monitor: str = "ndcg@10", logger: logging.Logger | None = None) -> None:
        self.desc = desc
        self.monitor = monitor
        self.logger = logger if logger is not None else logging.getLogger("core.progress")

    def on_epoch_end(self, report: EpochReport) -> None:
        fields = " ".join(f"{k}={v}" for k, v in epoch_fields(report, self.monitor).items())
        self.logger.info("%s epoch %d/%d: %s", self.desc, report.epoch, report.max_epochs, fields)
