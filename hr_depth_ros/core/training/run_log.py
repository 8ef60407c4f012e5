"""What a fine-tuning run records while it trains: ``metrics.csv``, TensorBoard and the progress line (ROS-free).

Rank 0 alone writes (the other ranks of a torchrun job write to ``os.devnull`` and keep no
TensorBoard or progress bar). A resumed run appends to ``metrics.csv`` after dropping the rows the
interrupted run wrote after its ``latest/`` checkpoint (they are written again).
"""
from __future__ import annotations

import csv
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ['RunLog', 'METRICS_FILE', 'TENSORBOARD_FOLDER']

METRICS_FILE = 'metrics.csv'
TENSORBOARD_FOLDER = 'tensorboard'


def _drop_rows_after(path: Path, step: int) -> None:
    """Rewrite the metrics CSV ``path`` (atomically) without its rows after ``step``."""
    with open(path, newline='') as stream:
        rows = list(csv.reader(stream))
    if not rows:
        return
    header, body = rows[0], rows[1:]
    column = header.index('step') if 'step' in header else 0
    kept = [row for row in body if not (row and row[column].isdigit() and int(row[column]) > step)]
    if len(kept) == len(body):
        return
    staging = path.with_name(f'.{path.name}.tmp-{os.getpid()}')
    with open(staging, 'w', newline='') as stream:
        csv.writer(stream).writerows([header, *kept])
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(staging, path)


class RunLog:
    """The records of one run in ``output`` (a context manager: closes the CSV, TensorBoard and the bar).

    ``columns``: the CSV's columns; ``start_step`` / ``total``: the run's first and last step;
    ``samples_per_step``: training samples of one step, all ranks together; ``emit``: the trainer's
    event callback (``'progress'`` events); ``progress_bar``: a tqdm bar (None: when stderr is a terminal).
    """

    def __init__(self, output: Path, columns: Sequence[str], is_main: bool, resume: bool, start_step: int,
                 total: int, samples_per_step: int, log_every: int, emit: Callable[..., None],
                 progress_bar: bool | None = None) -> None:
        self.total, self.start_step, self.log_every = total, start_step, log_every
        self.samples_per_step = samples_per_step
        self.emit = emit
        metrics_path = output / METRICS_FILE if is_main else Path(os.devnull)
        new_csv = not (resume and metrics_path.is_file())
        if not new_csv:  # rows the interrupted run wrote after latest/ are written again: drop them
            _drop_rows_after(metrics_path, start_step)
        self.stream = open(metrics_path, 'w' if new_csv else 'a', newline='')
        self.writer = csv.DictWriter(self.stream, fieldnames=list(columns))
        if new_csv:
            self.writer.writeheader()
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional
            self.tensorboard = SummaryWriter(str(output / TENSORBOARD_FOLDER)) if is_main else None
        except Exception:  # tensorboard not installed
            self.tensorboard = None
        self.bar = None
        if (sys.stderr.isatty() if progress_bar is None else progress_bar) and is_main:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start_step, desc='fine-tuning', unit='step')
        self.start_time = time.perf_counter()  # from start_clock()
        self.samples_per_s = 0.0
        self.running: list[float] = []

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start_clock(self) -> None:
        """Training starts now (samples per second and the ETA count from here)."""
        self.start_time = time.perf_counter()

    def train_step(self, step: int, epoch: int, loss: float, info: dict[str, Any], lr: float,
                   best_val: float | None) -> bool:
        """After optimiser step ``step``: progress (bar, event) and, every ``log_every`` steps, a CSV row
        (then True)."""
        self.running.append(loss)
        elapsed = time.perf_counter() - self.start_time
        done = step - self.start_step
        self.samples_per_s = done * self.samples_per_step / max(elapsed, 1e-9)  # all ranks together
        eta = (self.total - step) * elapsed / max(done, 1)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f'{loss:.4f}')
        self.emit('progress', step=step, total=self.total, epoch=epoch, loss=loss, eta_s=eta,
                  samples_per_s=self.samples_per_s, best_val=best_val)
        if step % self.log_every == 0 or step == self.total:
            row = {'step': step, 'epoch': epoch, 'split': 'train', 'loss': float(np.mean(self.running)),
                   'photometric': float(info['photometric']), 'lr': lr, 'samples_per_s': self.samples_per_s}
            self._write(row)
            if self.tensorboard is not None:
                self.tensorboard.add_scalar('train/loss', row['loss'], step)
            self.running.clear()
            return True
        return False

    def validation(self, row: dict[str, Any], result: dict[str, float]) -> None:
        """A validation's CSV row and its metrics (``result``) in TensorBoard."""
        self._write(row)
        if self.tensorboard is not None:
            for key, value in result.items():
                self.tensorboard.add_scalar(f'val/{key}', value, row['step'])

    def _write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.stream.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.stream.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
