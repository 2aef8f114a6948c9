"""`crowd generate`: write a synthetic Tmall-like log as the canonical parquet tables.

Users are simulated in independent chunks (each seeded from (seed, chunk)), so the
output does not depend on how many processes run and memory is bounded by one
chunk per worker whatever the total size.

Layout of a dataset directory:
    events/part-NNNNN.parquet   user_id, item_id, action, ts (sorted by ts inside a part)
    items.parquet               item_id, category_id, parent_category_id, brand_id, shop_id
    oracle/part-NNNNN.parquet   ds, user_id, brand_id (item_id with item memory), p_buy, p_buy_se, p_buy_half,
                                affinity, intent
    oracle_tags/part-NNNNN.parquet  ds, user_id, tag_id, p_buy, p_buy_se (with oracle_tags: P(a buy in the tag's
                                categories in the label window); users absent had no chance of one)
    item_subset.parquet         item_id: the items a task with target item ranks (presets with a subset)
    truth/brands.parquet        the hidden brand traits (related brand, repeat cycle, popularity)
    truth/users/part-NNNNN.parquet  the hidden user traits (activity rate, whether the taste drifts)
    manifest.json               the configuration, the counts and the timings
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ml.config import ACTIONS
from ml.outputs import replacing
from ml.synth.oracle import check_oracle_is_exact, oracle_at
from ml.synth.params import GeneratorConfig
from ml.synth.simulate import DayEvents, Simulator
from ml.synth.world import World, brand_category_shares, build_world, draw_users

# a dataset's size and speed: `crowd generate` prints its own line (ml.cli.RESULTS_LOGGER)
results_log = logging.getLogger("ml.results.synth")

EVENTS_SCHEMA = pa.schema(
    [("user_id", pa.int64()), ("item_id", pa.int64()), ("action", pa.string()), ("ts", pa.timestamp("us"))]
)
_ACTIONS = pa.array(ACTIONS, pa.string())
_TARGET_CHUNK_EVENTS = 3_000_000
_EVENTS_PER_SESSION = 4.8  # measured on the defaults; only used to size chunks


def expected_events_per_user(cfg: GeneratorConfig) -> float:
    p = cfg.intensities
    sessions_per_day = float(np.exp(p.activity_mu + p.activity_sigma**2 / 2)) * float(np.mean(p.weekly_profile))
    return sessions_per_day * _EVENTS_PER_SESSION * cfg.sizes.days


def plan_chunks(cfg: GeneratorConfig) -> list[tuple[int, int]]:
    """(first user, count) per chunk: a few million events each."""
    per_chunk = cfg.chunk_users or max(256, int(_TARGET_CHUNK_EVENTS / expected_events_per_user(cfg)))
    n = cfg.sizes.users
    return [(first, min(per_chunk, n - first)) for first in range(0, n, per_chunk)]


def _oracle_days(cfg: GeneratorConfig) -> dict[int, dt.date]:
    if cfg.oracle_dates and min(cfg.oracle_rollouts, cfg.ceiling_rollouts) < 2:
        raise ValueError(f"the oracle needs at least 2 rollouts per date (its error compares their halves), got "
                         f"{cfg.oracle_rollouts} and {cfg.ceiling_rollouts} on the ceiling's dates")
    days = {}
    for d in cfg.oracle_dates:
        t = (d - cfg.sizes.start).days
        if t < 1 or t + cfg.oracle_label_days > cfg.sizes.days:
            raise ValueError(
                f"oracle date {d}: the log runs {cfg.sizes.start} .. {cfg.sizes.end} (exclusive), "
                f"which must contain {d} and its {cfg.oracle_label_days}-day label window"
            )
        days[t] = d
    return days


def _events_table(world: World, user_ids: np.ndarray, day_parts: list[tuple[int, DayEvents]],
                  hourly: bool = False) -> pa.Table:
    start = np.datetime64(world.sizes.start, "s").astype(np.int64)
    user = np.concatenate([e.user for _, e in day_parts])
    item = np.concatenate([e.item for _, e in day_parts])
    action = np.concatenate([e.action for _, e in day_parts])
    sec = np.concatenate([(start + t * 86_400 + e.sec.astype(np.int64)) for t, e in day_parts])
    if hourly:  # the Tianchi mobile log's resolution: the start of the hour
        sec -= sec % 3600
    return pa.table(
        [
            pa.array(user_ids[user]),
            pa.array(world.item_ids[item]),
            _ACTIONS.take(pa.array(action)),
            pa.array((sec * 1_000_000).astype("datetime64[us]")),
        ],
        schema=EVENTS_SCHEMA,
    )


def simulate_chunk(cfg: GeneratorConfig, world: World, chunk: int, first: int, count: int, out: Path) -> dict:
    """Simulate one chunk of users over the whole log and write its parts. Returns its counts."""
    rng_users = np.random.default_rng(np.random.SeedSequence([cfg.seed, 1, chunk]))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 2, chunk]))
    users = draw_users(world, first, count, rng_users)
    sim = Simulator(world, users)
    state = sim.initial_state(rng)
    oracle_days = _oracle_days(cfg)
    if oracle_days:
        check_oracle_is_exact(sim, cfg.oracle_label_days)

    day_parts: list[tuple[int, DayEvents]] = []
    oracle_parts, tag_parts = [], []
    oracle_seconds = 0.0
    groups = (brand_category_shares(world, cfg.intensities.item_skew, [np.asarray(c) for _, c in cfg.oracle_tags])
              if cfg.oracle_tags else None)
    tag_ids = np.asarray([t for t, _ in cfg.oracle_tags], dtype=np.int64)
    for t in range(world.sizes.days):
        if t in oracle_days:
            # its own random stream: asking for an oracle never changes the log
            t0 = time.perf_counter()
            rng_o = np.random.default_rng(np.random.SeedSequence([cfg.seed, 3, chunk, t]))
            rollouts = cfg.ceiling_rollouts if oracle_days[t] in cfg.ceiling_dates else cfg.oracle_rollouts
            frame = oracle_at(sim, state, t, cfg.oracle_label_days, rollouts, rng_o, groups=groups)
            if groups is not None:
                frame, tags = frame
                tags.insert(0, "ds", oracle_days[t])
                tag_parts.append(tags)
            frame.insert(0, "ds", oracle_days[t])
            oracle_parts.append(frame)
            oracle_seconds += time.perf_counter() - t0
        ev = sim.step_day(state, t, rng, emit=True)
        if ev is not None:
            day_parts.append((t, ev))

    table = _events_table(world, users.ids, day_parts, cfg.hourly)
    pq.write_table(table, out / "events" / f"part-{chunk:05d}.parquet", compression="zstd", row_group_size=1 << 20)
    counts = np.bincount(np.concatenate([e.action for _, e in day_parts]), minlength=len(ACTIONS))
    truth = pa.table(
        {
            "user_id": users.ids,
            "sessions_per_day": users.rate,
            "drifts": np.any(users.taste0 != users.taste1, axis=1),
        }
    )
    pq.write_table(truth, out / "truth" / "users" / f"part-{chunk:05d}.parquet")
    if oracle_parts:
        o = pd.concat(oracle_parts, ignore_index=True)
        o["user_id"] = users.ids[o.pop("user").to_numpy()]
        entity = "item_id" if "item" in o else "brand_id"
        if "item" in o:
            o["item_id"] = world.item_ids[o.pop("item").to_numpy()]
        else:
            o["brand_id"] = world.brand_ids[o.pop("brand").to_numpy()]
        o = o[["ds", "user_id", entity, "p_buy", "p_buy_se", "p_buy_half", "affinity", "intent"]]
        pq.write_table(pa.Table.from_pandas(o, preserve_index=False), out / "oracle" / f"part-{chunk:05d}.parquet",
                       compression="zstd")
    if tag_parts:
        t = pd.concat(tag_parts, ignore_index=True)
        t["user_id"] = users.ids[t.pop("user").to_numpy()]
        t["tag_id"] = tag_ids[t.pop("tag").to_numpy()]
        t = t[["ds", "user_id", "tag_id", "p_buy", "p_buy_se", "p_buy_half"]]
        pq.write_table(pa.Table.from_pandas(t, preserve_index=False),
                       out / "oracle_tags" / f"part-{chunk:05d}.parquet", compression="zstd")
    return {"chunk": chunk, "events": int(counts.sum()), "actions": counts.tolist(), "oracle_seconds": oracle_seconds}


# each worker builds the world once (deterministic from the seed) instead of receiving it pickled
_WORKER: dict = {}


def _init_worker(cfg: GeneratorConfig) -> None:
    _WORKER["world"] = build_world(cfg.sizes, cfg.intensities, cfg.seed)


def _run_chunk(cfg: GeneratorConfig, chunk: int, first: int, count: int, out: Path) -> dict:
    return simulate_chunk(cfg, _WORKER["world"], chunk, first, count, out)


def items_table(world: World, item_brands: bool = True) -> pa.Table:
    """The item table; without item_brands, brand and shop are null as in logs that carry none (Taobao)."""
    leaf = world.item_leaf
    n = len(world.item_ids)
    return pa.table(
        {
            "item_id": world.item_ids,
            "category_id": world.leaf_ids[leaf],
            "parent_category_id": world.parent_ids[world.leaf_parent[leaf]],
            "brand_id": world.brand_ids[world.item_brand] if item_brands else pa.nulls(n, pa.int64()),
            "shop_id": world.item_shop_ids if item_brands else pa.nulls(n, pa.int64()),
        }
    )


def item_subset_table(world: World, share: float, seed: int) -> pa.Table:
    """A random share of the items (the Tianchi competition's subset P), sorted."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4]))
    keep = rng.random(len(world.item_ids)) < share
    return pa.table({"item_id": np.sort(world.item_ids[keep])})


def brands_truth_table(world: World) -> pa.Table:
    return pa.table(
        {
            "brand_id": world.brand_ids,
            "category_id": world.leaf_ids[world.brand_leaf],
            "popularity": world.brand_pop,
            "related_brand_id": world.brand_ids[world.brand_related],
            "repeat_cycle_days": world.brand_repeat_cycle.astype(np.int32),
        }
    )


def oracle_manifest(cfg: GeneratorConfig) -> dict:
    """What the manifest says of the oracle: a dataset whose oracle differs is another dataset."""
    return {
        "dates": [str(d) for d in cfg.oracle_dates],
        "label_days": cfg.oracle_label_days,
        "rollouts": cfg.oracle_rollouts,
        "ceiling_dates": [str(d) for d in cfg.ceiling_dates if d in cfg.oracle_dates],
        "ceiling_rollouts": cfg.ceiling_rollouts,
        "target": "item" if cfg.intensities.item_focus > 0 else "brand",
        "tags": [{"tag_id": t, "categories": list(c)} for t, c in cfg.oracle_tags],
    }


def generate(cfg: GeneratorConfig, out: Path, progress: bool = True) -> dict:
    """Generate a dataset into `out` (replacing a dataset the project made there, once the new one is
    complete: ml.outputs). Returns the manifest."""
    t_start = time.perf_counter()
    _oracle_days(cfg)  # fail on a bad date before any work
    with replacing(out) as tmp:
        manifest = _generate_into(tmp, cfg, progress, t_start)
    results_log.info("generated %d events for %d users in %.1fs (%.0f events/s) into %s",
                     manifest["events"], cfg.sizes.users, manifest["seconds"], manifest["events_per_second"], out)
    return manifest


def _generate_into(tmp: Path, cfg: GeneratorConfig, progress: bool, t_start: float) -> dict:
    world = build_world(cfg.sizes, cfg.intensities, cfg.seed)
    for sub in ("events", "oracle", "oracle_tags", "truth/users"):
        (tmp / sub).mkdir(parents=True)
    pq.write_table(items_table(world, cfg.item_brands), tmp / "items.parquet")
    if cfg.item_subset_share > 0:
        pq.write_table(item_subset_table(world, cfg.item_subset_share, cfg.seed), tmp / "item_subset.parquet")
    pq.write_table(brands_truth_table(world), tmp / "truth" / "brands.parquet")

    chunks = plan_chunks(cfg)
    workers = min(cfg.workers or os.cpu_count() or 1, len(chunks))
    results = []
    # disable=None: a bar on a terminal only, none in a log file or a task's log
    bar = tqdm(total=cfg.sizes.users, unit="user", desc="generate", disable=None if progress else True,
               mininterval=1.0)
    if workers == 1:
        for i, (first, count) in enumerate(chunks):
            results.append(simulate_chunk(cfg, world, i, first, count, tmp))
            bar.update(count)
            bar.set_postfix(events=sum(r["events"] for r in results))
    else:
        ctx = mp.get_context("fork")
        with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg,)) as pool:
            futures = {pool.submit(_run_chunk, cfg, i, first, count, tmp): count
                       for i, (first, count) in enumerate(chunks)}
            for fut in cf.as_completed(futures):
                results.append(fut.result())
                bar.update(futures[fut])
                bar.set_postfix(events=sum(r["events"] for r in results))
    bar.close()

    actions = np.sum([r["actions"] for r in results], axis=0)
    elapsed = time.perf_counter() - t_start
    manifest = {
        "source": "synthetic",
        "seed": cfg.seed,
        "item_brands": cfg.item_brands,
        "sizes": {k: str(v) if isinstance(v, dt.date) else v for k, v in asdict(cfg.sizes).items()},
        "intensities": asdict(cfg.intensities),
        "oracle": oracle_manifest(cfg),
        "hourly": cfg.hourly,
        "item_subset_share": cfg.item_subset_share,
        "chunks": len(chunks),
        "workers": workers,
        "events": int(actions.sum()),
        "actions": {a: int(c) for a, c in zip(ACTIONS, actions, strict=True)},
        "items": cfg.sizes.items,
        "seconds": round(elapsed, 3),
        # the oracle's CPU time is reported apart: the log's own speed is what scales with events
        "oracle_cpu_seconds": round(sum(r["oracle_seconds"] for r in results), 3),
        "events_per_second": round(float(actions.sum()) / max(elapsed, 1e-9)),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest
