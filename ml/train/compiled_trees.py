"""LightGBM boosters compiled to machine code for scoring (lleaves, over LLVM).

LightGBM's own predict turns every dense row into (feature, value) pairs before it walks a tree: on the 119
features of make run's booster one tree alone costs 0.4 s per million rows, and its 53 trees 1.3 s on 2 cores
(750k pairs/s). Compiled, the same trees alone take 0.18 s, reading the rows where they lie (bench/score.py
prints both, the matrices built included).
Compiling takes 7-12 s, so the object code is cached beside the booster's model file, named by everything
that decides it: the model's text, the compiler's versions and the host CPU, so that a bundle copied to another
machine compiles again instead of running instructions its CPU may lack. The scores equal LightGBM's to within
1e-15 (the same trees summed in another order); a booster lleaves cannot compile is scored by LightGBM.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from importlib.metadata import version
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_DIR = "compiled"  # beside the boosters' model files: lgbm/compiled/NAME.KEY.o


class CompiledBooster:
    """One booster's trees as a native function of a float64 row-major matrix (LightGBM's feature order)."""

    def __init__(self, model, threads: int) -> None:  # noqa: ANN001 (lleaves.Model)
        self._model = model
        self.threads = threads

    def predict(self, matrix: np.ndarray, threads: int | None = None) -> np.ndarray:
        """P(buy) of each row, as LightGBM's predict gives it (the objective's sigmoid applied), on `threads`
        threads (default: the process's)."""
        return self._model.predict(np.ascontiguousarray(matrix, dtype=np.float64), n_jobs=threads or self.threads)


def compile_booster(model_file: Path, threads: int, cached_only: bool = False) -> CompiledBooster | None:
    """The booster saved at model_file, compiled (or read from its cache); None where lleaves cannot take it,
    with the reason logged, and LightGBM scores it instead. cached_only: None unless this host's compiled
    trees are cached already (reading them takes milliseconds, compiling seconds)."""
    try:
        import lleaves
    except ImportError as e:  # an environment without the lock's lleaves
        if not cached_only:  # nothing was asked of it but a look for a cache: no word
            log.warning("scoring %s with LightGBM: lleaves is not installed (%s)", model_file.name, e)
        return None
    model_file = Path(model_file)
    try:
        cache = model_file.parent / CACHE_DIR / f"{model_file.stem}.{_cache_key(model_file)}.o"
        if cached_only and not cache.exists():
            return None
        model = lleaves.Model(model_file=str(model_file))
        if cache.exists():
            model.compile(cache=str(cache))
        elif os.access(model_file.parent, os.W_OK):
            cache.parent.mkdir(exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.part")  # whole or absent: another process may read it
            model.compile(cache=str(partial))
            os.replace(partial, cache)
            log.info("compiled %s (%d trees) into %s", model_file.name, model.num_trees(), cache)
        else:  # a read-only bundle: compiled for this process alone
            model.compile()
    except Exception as e:  # noqa: BLE001 (any refusal of the compiler leaves LightGBM's own predict)
        log.warning("scoring %s with LightGBM: lleaves could not compile it (%s: %s)", model_file.name,
                    type(e).__name__, e)
        return None
    return CompiledBooster(model, threads)


def _cache_key(model_file: Path) -> str:
    """What the object code is a function of: the model's text and this host's compiler (_host)."""
    digest = hashlib.sha256(model_file.read_bytes())
    for part in _host():
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


@functools.cache
def _host() -> tuple[str, ...]:
    """lleaves' and llvmlite's versions and the CPU (its name and its features) LLVM compiles for: asked once per
    process, not once per booster (a per_target bundle holds one for each target)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()  # what LLVM needs before it is asked about the host's CPU
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot tell on this host; lleaves then compiles for no extra features
        features = ""
    return (version("lleaves"), version("llvmlite"), llvm.get_process_triple(), llvm.get_host_cpu_name(), features)
