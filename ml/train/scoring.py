"""Scoring a deep model over many rows: batches without autograd, in the rows' order, on every core.

On a CPU the rows are shared among processes of one torch thread each rather than scored by one process over
all of torch's threads. A batch is hundreds of small operations (DIN's attention: gathers, sums and small
products over about 19k (row, behaviour) pairs), and torch spreads each over its threads and waits for them at
its end: two threads took a batch of DIN only 1.6 times faster than one. Two processes of one thread each,
on the same 2 cores and the same rows, scored 1.4-1.6x as many pairs a second for DIN and 1.1-1.9x for the
other deep models as one process of two threads (docs/models.md, "Scoring speed"). The processes are forked once the
model is built, so they share its weights and the memory-mapped rows (copy on write: each adds its own
batches' tensors, tens of MB); each writes its scores straight into a shared array.
"""

from __future__ import annotations

import logging
import mmap
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ml.features.dataset import CrowdData
from ml.models.zoo import CrowdModel
from ml.train.memory import trim_heap

log = logging.getLogger(__name__)

# scoring batches between two returns of the freed heap to the system (ml.train.memory.trim_heap) and of the
# scored rows' mapped pages (CrowdData.release_pages)
TRIM_EVERY = 16
POLL_S = 0.1  # how often the progress bar follows the scoring processes
# forking two scoring processes and waiting for them costs about 40 ms (2 cores, after the default task's rows
# were prepared): what DIN scores 8k rows in, and DNN 25k. Fewer batches than this per process, one process
# scores them (the validation of a small training, the tests' data).
BATCHES_PER_PROCESS = 8


def scoring_processes(device: torch.device, n_batches: int) -> int:
    """How many processes score on this device: on a CPU under Linux, one per torch thread (so that
    OMP_NUM_THREADS, or torch.set_num_threads, says how many cores scoring takes), with BATCHES_PER_PROCESS
    batches each at least; one on an accelerator, whose own parallelism a batch already fills, and where fork
    is not safe (macOS, Windows)."""
    if device.type != "cpu" or not sys.platform.startswith("linux") or multiprocessing.current_process().daemon:
        return 1  # (a daemonic process may not start processes)
    return max(1, min(torch.get_num_threads(), n_batches // BATCHES_PER_PROCESS))


@torch.no_grad()
def predict(model: CrowdModel, data: CrowdData, batch_size: int = 2048, device: torch.device | None = None,
            desc: str = "scoring", processes: int | None = None) -> np.ndarray:
    """P(buy) of every row, in batches, in the rows' order; a progress bar on a terminal (none in a log: tqdm's
    disable=None). A model that reads the sequences or the series scores the rows of one user together
    (CrowdData.scoring_order): a batch then builds each user's behaviour keys, or runs their series, once for
    all their targets.
    processes: how many processes share the batches (default: scoring_processes). Each takes a run of
    consecutive batches, the same batches one process would score: with one torch thread, the scores are the
    same floats whatever the number of processes.
    2048 rows a batch: the attention's activations then mostly stay in the CPU's caches. Over the 993,750
    backtest rows of the default task (2 cores, three runs each, `python bench/score.py --rows 1000000`): DIN
    221k-248k pairs/s at 2048 against 143k-191k at 4096 and 191k-208k at 1024, in one process."""
    device = device or next(model.parameters()).device
    model.eval()
    reads = batch_reads(model)
    order = data.scoring_order(reads.get("sequences", True) or reads.get("series", True))
    n_batches = -(-len(data) // batch_size)
    processes = scoring_processes(device, n_batches) if processes is None else max(1, min(processes, n_batches))
    if processes == 1:
        out = np.zeros(len(data), np.float32)
        bar = tqdm(total=n_batches, desc=desc, unit="batch", leave=False, disable=None)
        with bar:
            _score_batches(model, data, order, range(n_batches), batch_size, device, reads, out, bar.update)
        return out
    return _predict_forked(model, data, order, n_batches, batch_size, device, reads, processes, desc)


def _score_batches(model: CrowdModel, data: CrowdData, order: np.ndarray, batches: range, batch_size: int,
                   device: torch.device, reads: dict[str, bool], out: np.ndarray,
                   done: Callable[[int], object]) -> None:
    """Score these batches of the order into out (indexed by row); done(1) after each."""
    rows = order[batches.start * batch_size:batches.stop * batch_size]
    for i, b in enumerate(data.batches(batch_size, device=device, order=rows, **reads)):
        out[rows[i * batch_size:(i + 1) * batch_size]] = model(b)["buy"].float().cpu().numpy()
        done(1)
        if i % TRIM_EVERY == TRIM_EVERY - 1:
            trim_heap()
            data.release_pages()  # the mapped rows already scored: a million rows' pages are 0.6 GB


def _predict_forked(model: CrowdModel, data: CrowdData, order: np.ndarray, n_batches: int, batch_size: int,
                    device: torch.device, reads: dict[str, bool], processes: int, desc: str) -> np.ndarray:
    """The batches in `processes` runs, each scored by a forked process of one torch thread into a shared
    array; the progress bar follows a shared count of the batches done. A process that fails stops the others,
    and its error is raised here in one line."""
    scores_buf, done_buf = mmap.mmap(-1, 4 * len(data)), mmap.mmap(-1, 8 * processes)
    scores, done = np.frombuffer(scores_buf, np.float32), np.frombuffer(done_buf, np.int64)
    ctx = multiprocessing.get_context("fork")
    errors = ctx.SimpleQueue()
    cuts = [n_batches * p // processes for p in range(processes + 1)]
    workers = [ctx.Process(target=_score_share, name=f"scoring-{p}", daemon=True,
                           args=(model, data, order, range(cuts[p], cuts[p + 1]), batch_size, device, reads,
                                 scores, done[p:p + 1], errors))
               for p in range(processes)]
    started = time.perf_counter()
    try:
        for w in workers:
            w.start()
        with tqdm(total=n_batches, desc=desc, unit="batch", leave=False, disable=None) as bar:
            while any(w.exitcode is None for w in workers):
                multiprocessing.connection.wait([w.sentinel for w in workers if w.exitcode is None], POLL_S)
                bar.update(int(done.sum()) - bar.n)
                if any(w.exitcode not in (None, 0) for w in workers):
                    break
        failed = [w for w in workers if w.exitcode != 0]
        if failed:  # the first error a process handed over, else the first process's exit code (killed)
            name, reason = errors.get() if not errors.empty() else (failed[0].name, f"exit code {failed[0].exitcode}")
            raise RuntimeError(f"{name} of {processes} failed: {reason}")
        log.debug("scored %d rows in %d processes in %.1f s", len(data), processes, time.perf_counter() - started)
        return scores.copy()
    finally:
        for w in workers:
            if w.is_alive():
                w.terminate()
            w.join()
        errors.close()


def _score_share(model: CrowdModel, data: CrowdData, order: np.ndarray, batches: range, batch_size: int,
                 device: torch.device, reads: dict[str, bool], scores: np.ndarray, done: np.ndarray,
                 errors: multiprocessing.SimpleQueue) -> None:
    """A forked process's run of batches, on one torch thread (the others are its siblings')."""
    def count(n: int) -> None:
        done[0] += n

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (an Airflow task's): just stop
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            _score_batches(model, data, order, batches, batch_size, device, reads, scores, count)
    except BaseException as e:  # noqa: BLE001 (handed to the parent, which raises it)
        errors.put((multiprocessing.current_process().name, f"{type(e).__name__}: {e}"))
        os._exit(1)


def batch_reads(model: torch.nn.Module) -> dict[str, bool]:
    """What a model's batches must hold: a CrowdModel says; any other module gets everything."""
    return model.reads if isinstance(model, CrowdModel) else {}
