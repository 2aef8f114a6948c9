"""The deep models and their trainer on the tiny exports: shapes, masks, OOV, learning, resuming."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ml.features.dataset import CrowdData, collapse_repeats, fit_feature_map, read_exports
from ml.features.feature_map import OOV, FeatureMap
from ml.models.layers import LocalActivation, fm_second_order, gate, run_mlp
from ml.models.zoo import MODELS, ModelConfig, build_model
from ml.train.scoring import BATCHES_PER_PROCESS, predict, scoring_processes
from ml.train.trainer import TrainConfig, Trainer, model_loss, seed_everything

SMALL = ModelConfig(embed_dim=8, hidden=[32, 16], attention_hidden=[16], expert_hidden=[16], n_experts=2,
                    ple_specific_experts=1, ple_shared_experts=1, lstm_hidden=8)


@pytest.fixture(scope="module")
def raw(tiny_exports, task):
    return read_exports(tiny_exports, task.sample_dates[:2], series_shape=task.series_shape())


@pytest.fixture(scope="module")
def fmap(raw, task) -> FeatureMap:
    return fit_feature_map(raw, task)


@pytest.fixture(scope="module")
def data(raw, fmap) -> CrowdData:
    return CrowdData(raw, fmap)


def _first_batch(data: CrowdData, n: int = 256) -> dict[str, torch.Tensor]:
    # rows with long histories first, so that the padding tests have something to pad
    lengths = data.offsets[data.row + 1] - data.offsets[data.row]
    return data.batch(np.argsort(-lengths, kind="stable")[:n])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_runs_forward_and_backward(name, fmap, data):
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL)
    batch = _first_batch(data)
    out = model(batch)
    assert out["buy"].shape == (256,) and ((out["buy"] > 0) & (out["buy"] < 1)).all()
    loss = model_loss(out, batch["labels"], TrainConfig())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    if name == "ple":
        assert set(out) == {"buy", "collect_cart"}
        assert model.last_se_weights.shape == (256, 2 + len(fmap.dense))


def _deepfm_with_every_field(model, batch):
    """DeepFM as written in the paper's terms: the [B, fields, dim] tensor built, flattened into the DNN."""
    ids = batch["ids"]
    linear = model.linear_dense(batch["dense"]).squeeze(-1)
    for i, v in enumerate(model.emb.fields_of):
        if v != "user" or model.cfg.user_embedding:
            linear = linear + model.linear_ids[v](ids[:, i]).squeeze(-1)
    fields = torch.cat([model.id_fields(ids), model.dense_fields(batch["dense"])], dim=1)
    return torch.sigmoid(linear + fm_second_order(fields) + model.deep(fields.flatten(1)).squeeze(-1))


def _ple_with_every_field(model, batch):
    fields = torch.cat([model.id_fields(batch["ids"]), model.dense_fields(batch["dense"])], dim=1)
    fields, _ = model.se(fields)
    x = torch.cat([fields.flatten(1), model.interest(batch)], dim=-1)
    h_cc = h_buy = h_shared = x
    for layer in model.layers:
        e_cc, e_buy, e_sh = layer["cc"](h_cc), layer["buy"](h_buy), layer["shared"](h_shared)
        new_cc = gate(layer["gate_cc"](h_cc), torch.cat([e_cc, e_sh], dim=1))
        new_buy = gate(layer["gate_buy"](h_buy), torch.cat([e_buy, e_sh], dim=1))
        if "gate_shared" in layer:
            h_shared = gate(layer["gate_shared"](h_shared), torch.cat([e_cc, e_buy, e_sh], dim=1))
        h_cc, h_buy = new_cc, new_buy
    fm = fm_second_order(fields)
    y = {t: torch.sigmoid(model.towers[t](h).squeeze(-1) + model.fm_scale[t] * fm)
         for t, h in (("y1", h_cc), ("y2", h_buy), ("y3", h_buy))}
    return y["y1"] * y["y3"] + (1 - y["y1"]) * y["y2"]


@pytest.mark.parametrize(("name", "reference"), [("deepfm", _deepfm_with_every_field), ("ple", _ple_with_every_field)])
def test_the_dense_fields_are_never_built_and_the_output_is_the_same(name, reference, fmap, data):
    """DeepFM and PLE compute their Linear and FM over the dense fields from the values and the vectors
    (ml.models.layers.DenseFields): the same output and gradients as building every field."""
    torch.manual_seed(0)
    model = build_model(name, fmap, ModelConfig(ple_layers=2)).eval()
    with torch.no_grad():
        for p in model.parameters():  # away from the zero initialisations, so every term counts
            p.add_(0.05 * torch.randn_like(p))
    batch = _first_batch(data)
    fast, slow = model(batch)["buy"], reference(model, batch)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)
    vectors = model.dense_fields.weight
    (g_fast,) = torch.autograd.grad(fast.sum(), vectors)
    (g_slow,) = torch.autograd.grad(reference(model, batch).sum(), vectors)
    torch.testing.assert_close(g_fast, g_slow, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["deepfm", "ple"])
def test_scoring_keeps_the_first_layers_weights_and_follows_every_change_of_them(name, fmap, data):
    """Without autograd the first layer's combined weights are kept between batches (first_layer's cache):
    the scores equal those computed with autograd, and after an optimiser step or a loaded checkpoint they
    are those of the new weights, never of the kept ones."""
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL).eval()
    batch = _first_batch(data)

    def scores() -> torch.Tensor:
        with torch.no_grad():
            return model(batch)["buy"]

    first = scores()
    assert model.first_layer_cache, "scoring keeps the weights"
    torch.testing.assert_close(scores(), first, rtol=0, atol=0)
    torch.testing.assert_close(model(batch)["buy"].detach(), first, rtol=0, atol=0)  # with autograd: rebuilt
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model_loss(model(batch), batch["labels"], TrainConfig()).backward()
    scores()  # kept again, then the step changes every weight in place
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    stepped = scores()
    assert not torch.equal(stepped, first)
    torch.testing.assert_close(stepped, model(batch)["buy"].detach(), rtol=0, atol=0)
    scores()
    model.load_state_dict(saved)  # back to the first weights, copied in place
    torch.testing.assert_close(scores(), first, rtol=0, atol=0)
    assert model.first_layer_cache
    copy = pickle.loads(pickle.dumps(model))  # noqa: S301 (its own bytes: a module pickled whole)
    assert not copy.first_layer_cache, "a pickled model carries no kept weights"
    with torch.no_grad():
        torch.testing.assert_close(copy(batch)["buy"], first, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scoring_without_autograd_gives_the_autograd_paths_floats_and_leaves_the_batch_alone(name, fmap, data):
    """Without autograd the MLPs' activations and DIN's attention sums are computed in place (run_mlp,
    LocalActivation.pooled): the very floats of the path training takes, and the batch's tensors untouched."""
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL).eval()
    batch = _first_batch(data)
    before = {k: v.clone() for k, v in batch.items()}
    with torch.no_grad():
        scored = model(batch)
    trained = model(batch)
    assert trained["buy"].requires_grad
    for task, out in scored.items():
        torch.testing.assert_close(out, trained[task].detach(), rtol=0, atol=0)
    assert all(torch.equal(batch[k], v) for k, v in before.items())


@pytest.mark.parametrize("name", ["din", "lstm", "dnn"])
def test_scoring_in_several_processes_gives_one_process_floats_in_the_rows_order(name, fmap, data):
    """Forked processes each score a run of the same batches one process scores (DIN and the LSTM reorder the
    rows by user first); on one torch thread each, the very floats, each written to its row."""
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = predict(model, data, batch_size=64, processes=1)
        shared = predict(model, data, batch_size=64, processes=3)
    finally:
        torch.set_num_threads(threads)
    assert len(data) > 3 * 64 and np.unique(alone).size > len(data) // 2
    np.testing.assert_array_equal(shared, alone)


class _FailsOnAShortBatch(torch.nn.Module):
    def __init__(self, batch_size: int):
        super().__init__()
        self.w, self.batch_size = torch.nn.Parameter(torch.ones(1)), batch_size

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if len(batch["labels"]) < self.batch_size:  # the last batch: the last process's
            raise ValueError("a batch this model cannot take")
        return {"buy": torch.sigmoid(self.w * batch["dense"][:, 0])}


def test_a_scoring_process_that_fails_raises_its_error_here_in_one_line(data):
    batch_size = 64 if len(data) % 64 else 60
    with pytest.raises(RuntimeError, match=r"^scoring-1 of 2 failed: ValueError: a batch this model cannot take$"):
        predict(_FailsOnAShortBatch(batch_size), data, batch_size=batch_size, processes=2)


def test_scoring_takes_a_process_per_torch_thread_on_a_cpu_given_enough_batches_and_one_on_an_accelerator():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert scoring_processes(torch.device("cpu"), 1000) == 2
        assert scoring_processes(torch.device("cpu"), 2 * BATCHES_PER_PROCESS) == 2
        assert scoring_processes(torch.device("cpu"), 2 * BATCHES_PER_PROCESS - 1) == 1  # a fork would cost more
        assert scoring_processes(torch.device("cuda"), 1000) == 1
    finally:
        torch.set_num_threads(threads)


def test_run_mlp_overwrites_only_the_temporaries_it_owns():
    """An activation reading the caller's tensor allocates; one reading a Linear's output, or the caller's
    temporary handed over (own_input), overwrites it; a PReLU of several slopes is applied as it is."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.PReLU(), torch.nn.Linear(4, 6), torch.nn.Dropout(0.5),
                              torch.nn.Sequential(torch.nn.PReLU(), torch.nn.Linear(6, 3)), torch.nn.ReLU(),
                              torch.nn.PReLU(3)).eval()
    x = torch.randn(8, 4)
    kept = x.clone()
    expected = net(x).detach()
    with torch.no_grad():
        torch.testing.assert_close(run_mlp(net, x), expected, rtol=0, atol=0)
        assert torch.equal(x, kept), "the caller's input was overwritten"
        out = run_mlp(net, x, own_input=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    torch.testing.assert_close(x, torch.nn.functional.prelu(kept, net[1].weight).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_starts_at_the_training_labels_base_rate(name, fmap, data):
    """Not at 0.5: with rare buyers, the first steps would pull the largest inputs (the buyers') down and an
    early model would rank backwards."""
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL)
    labels = np.zeros((1000, 2), np.float32)
    labels[:10, 0] = 1  # 1% buy
    labels[:100, 1] = 1  # 10% collect or cart, with every buyer among them (PLE's towers: y3 = 0.1, y2 = 0)
    model.init_base_rate(labels, np.ones(len(labels)))
    model.eval()
    with torch.no_grad():
        out = model(_first_batch(data))
    assert 0.002 < float(out["buy"].median()) < 0.05
    if name == "ple":
        assert 0.02 < float(out["collect_cart"].median()) < 0.5


def test_the_collate_packs_each_rows_behaviours_and_each_sequence_once(data):
    idx = np.arange(0, len(data), max(1, len(data) // 64))[:64]
    idx = np.concatenate([idx, idx[:8]])  # rows that share a sequence: their behaviours are packed once
    batch = data.batch(idx)
    rows = data.row[idx]
    lengths = data.offsets[rows + 1] - data.offsets[rows]
    assert batch["hist_row"].tolist() == np.repeat(np.arange(len(idx)), lengths).tolist()
    stored = np.concatenate([data.hist_target[data.offsets[r]:data.offsets[r + 1]] for r in rows])
    assert batch["hist_target"][batch["hist_index"]].tolist() == stored.tolist()
    distinct = np.unique(rows)
    assert len(batch["hist_target"]) == int((data.offsets[distinct + 1] - data.offsets[distinct]).sum()) < len(stored)
    assert (batch["hist_target"] > 0).all() and (batch["hist_count"] >= 1).all()
    assert batch["ids"].dtype == torch.int64 and batch["dense"].dtype == torch.float32
    assert "month" not in data.batch(idx, series=False) and "hist_row" not in data.batch(idx, sequences=False)
    # the ablation that hides each row's behaviours on its own target drops those pairs, and only those
    hidden = CrowdData.from_arrays(data.arrays(), data.fmap, data.columns, hide_own_target=True).batch(idx)
    own = torch.from_numpy(data.fmap.vocabularies["target"].encode(data.target_id[idx]))
    on_own = batch["hist_target"][batch["hist_index"]] == own[batch["hist_row"]]
    assert (hidden["hist_target"][hidden["hist_index"]] != own[hidden["hist_row"]]).all()
    assert len(hidden["hist_row"]) == int((~on_own).sum())


@pytest.mark.parametrize("name", ["din", "moe", "ple", "lstm"])
def test_a_rows_output_is_the_same_alone_as_among_other_users_and_the_same_user(name, fmap, data):
    """The batch holds each user's sequence and series once (CrowdData.batch): a row scores the same alone."""
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL).eval()
    idx = np.argsort(-(data.offsets[data.row + 1] - data.offsets[data.row]), kind="stable")
    by_user = data.scoring_order(True)
    # the longest sequences, the shortest (empty ones too), and rows of the same users together
    idx = np.concatenate([idx[:16], idx[-16:], by_user[:32]])
    assert len(np.unique(data.row[idx])) < len(idx)
    with torch.no_grad():
        together = model(data.batch(idx))["buy"]
        alone = torch.cat([model(data.batch(idx[i:i + 1]))["buy"] for i in range(len(idx))])
        torch.testing.assert_close(together, alone, rtol=0, atol=1e-6)
        if model.reads_sequences:  # and the attention does depend on the behaviours themselves
            batch = data.batch(idx)
            unseen = dict(batch, hist_target=torch.full_like(batch["hist_target"], OOV))
            assert not torch.allclose(model(batch)["buy"], model(unseen)["buy"])


def test_repeated_behaviours_are_kept_once_with_their_count_at_their_most_recent_place():
    # three sequences: [a, b, a, c, a], [], [b, b]; a behaviour is equal in every column, not in one
    offsets = np.array([0, 5, 5, 7])
    target = np.array([1, 2, 1, 3, 1, 2, 2])
    action = np.array([1, 1, 1, 1, 2, 1, 1])  # the last "a" was another action: another behaviour
    new_offsets, kept = collapse_repeats(offsets, {"t": target, "a": action})
    assert new_offsets.tolist() == [0, 4, 4, 5]
    assert kept["t"].tolist() == [1, 2, 3, 1, 2] and kept["a"].tolist() == [1, 1, 1, 2, 1]
    assert kept["hist_count"].tolist() == [2, 1, 1, 1, 2]


def _expanded(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch as exported: each row's behaviours its own, each repeated count times, with counts of one."""
    counts = batch["hist_count"][batch["hist_index"]].long()
    out = {k: v[batch["hist_index"]].repeat_interleave(counts) if k.startswith("hist_") else v
           for k, v in batch.items()}
    out["hist_row"] = batch["hist_row"].repeat_interleave(counts)
    out["hist_index"] = torch.arange(len(out["hist_row"]))
    out["hist_count"] = torch.ones(len(out["hist_row"]))
    return out


@pytest.mark.parametrize("name", ["din", "moe", "ple"])
def test_collapsed_repeats_give_the_output_and_gradients_of_the_whole_sequence(name, fmap, data):
    torch.manual_seed(0)
    model = build_model(name, fmap, SMALL).eval()
    batch = _first_batch(data, 64)
    assert (batch["hist_count"] > 1).any(), "the tiny data should repeat some behaviours"
    whole = _expanded(batch)
    assert len(whole["hist_row"]) > len(batch["hist_row"])
    out, reference = model(batch)["buy"], model(whole)["buy"]
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.sum(), list(model.parameters()), allow_unused=True)
    reference_grads = torch.autograd.grad(reference.sum(), list(model.parameters()), allow_unused=True)
    for g, r in zip(grads, reference_grads, strict=True):
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_din_attention_computes_the_papers_concatenated_input_exactly():
    """LocalActivation splits its first layer's weight instead of concatenating [q, k, q - k, q * k]: the same
    scores and gradients as the paper's form, from the same parameters."""
    torch.manual_seed(0)
    unit = LocalActivation(8, (16, 4))
    q, k = torch.randn(32, 8, requires_grad=True), torch.randn(32, 11, 8)
    mask = torch.rand(32, 11) > 0.3
    pooled, scores = unit(q, k, mask)
    expanded = q.unsqueeze(1).expand_as(k)
    reference = unit.net(torch.cat([expanded, k, expanded - k, expanded * k], dim=-1)).squeeze(-1) * mask
    torch.testing.assert_close(scores, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, (reference.unsqueeze(-1) * k).sum(dim=1), rtol=1e-5, atol=1e-6)
    grad, = torch.autograd.grad(pooled.sum(), q, retain_graph=True)
    reference_grad, = torch.autograd.grad((reference.unsqueeze(-1) * k).sum(dim=1).sum(), q)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-6)


def test_ids_never_seen_in_training_map_to_oov_at_scoring(raw, fmap, data):
    unseen = raw.samples.head(50).copy()
    unseen["user_id"] = unseen["user_id"] + 10**12
    unseen["target_id"] = 987_654_321
    ids = fmap.encode_ids(unseen)
    assert (ids[:, 0] == OOV).all() and (ids[:, 1] == OOV).all() and (ids[:, 2] > OOV).all()
    model = build_model("din", fmap, SMALL).eval()
    batch = data.batch(np.arange(50))
    batch["ids"] = torch.from_numpy(ids)
    with torch.no_grad():
        assert torch.isfinite(model(batch)["buy"]).all()


def test_feature_map_round_trips_through_json(fmap, tmp_path, raw):
    fmap.save(tmp_path / "fm.json")
    again = FeatureMap.load(tmp_path / "fm.json")
    np.testing.assert_array_equal(again.encode_ids(raw.samples), fmap.encode_ids(raw.samples))
    np.testing.assert_allclose(again.encode_dense(raw.samples), fmap.encode_dense(raw.samples))


def test_a_dense_column_with_no_value_is_filled_without_a_warning(raw, task):
    """A small real log's samples can hold a recency that is never set (no buy in any window): numpy's nanmax
    printed "All-NaN slice encountered" in the middle of `crowd train`."""
    import dataclasses
    import warnings

    column = next(c for c in raw.dense if raw.samples[c].isna().any())
    seen = raw.samples[column].max()
    samples = raw.samples.copy()
    samples[column] = np.nan
    emptied = dataclasses.replace(raw, samples=samples)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = fit_feature_map(emptied, task)
    assert fitted.fill[fitted.dense.index(column)] == 1.0
    assert fit_feature_map(raw, task).fill[fitted.dense.index(column)] == seen + 1.0


def test_loss_decreases_on_a_learnable_toy(fmap, data, tmp_path):
    """Labels made from one dense feature: a few epochs must learn them well."""
    seed_everything(0)
    toy = CrowdData.__new__(CrowdData)
    toy.__dict__.update(data.__dict__)
    toy.labels = data.labels.copy()
    toy.labels[:, 0] = (data.encoded_dense()[:, fmap.dense.index("ub_click_30d")] > 0.5).astype(np.float32)
    model = build_model("dnn", fmap, SMALL)
    trainer = Trainer(model, TrainConfig(epochs=3, batch_size=512, lr=3e-3, patience=5, progress=False,
                                         tensorboard=False), tmp_path)
    result = trainer.fit(toy, toy)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.5 * losses[0]
    assert result.best_auc > 0.97


def test_a_resumed_run_reproduces_the_uninterrupted_one(fmap, data, tmp_path):
    cfg = TrainConfig(epochs=3, batch_size=1024, patience=5, progress=False, tensorboard=False)

    def fresh():
        seed_everything(1)
        return build_model("din", fmap, SMALL)

    whole_trainer = Trainer(fresh(), cfg, tmp_path / "whole")
    whole = whole_trainer.fit(data, data)
    with pytest.raises(KeyboardInterrupt):
        Trainer(fresh(), cfg, tmp_path / "resumed").fit(data, data, stop_after=1)
    torch.manual_seed(999)  # the resumed process starts with another RNG state: the checkpoint restores it
    resumed_trainer = Trainer(build_model("din", fmap, SMALL), cfg, tmp_path / "resumed")
    resumed = resumed_trainer.fit(data, data)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    assert [h["valid_auc"] for h in resumed.history] == [h["valid_auc"] for h in whole.history]
    np.testing.assert_array_equal(predict(resumed_trainer.model, data), predict(whole_trainer.model, data))


class _RunsCode:
    """What a crafted checkpoint would hold: unpickling it calls a function of the attacker's choosing."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (self.marker.touch, ())


def test_the_epochs_progress_bar_stays_off_a_log_file(fmap, data, tmp_path, capfd):
    """pytest's captured stderr is not a terminal, as `crowd train > train.log 2>&1` is not: no bar frames."""
    trainer = Trainer(build_model("dnn", fmap, SMALL), TrainConfig(epochs=1, progress=True, tensorboard=False),
                      tmp_path)
    trainer.fit(data, data)
    err = capfd.readouterr().err
    assert "epoch 0:" not in err and "it/s" not in err, err


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(fmap, data, tmp_path):
    marker = tmp_path / "the-payload-ran"
    workdir = tmp_path / "checkpoints"
    workdir.mkdir()
    torch.save({"model": _RunsCode(marker)}, workdir / "last.pt")
    trainer = Trainer(build_model("dnn", fmap, SMALL), TrainConfig(epochs=1, progress=False, tensorboard=False),
                      workdir)
    with pytest.raises(ValueError, match=r"holds more than weights .*refusing to load it"):
        trainer.fit(data, data)
    assert not marker.exists()
