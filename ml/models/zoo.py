"""The model zoo: plain nn.Modules over a dict of tensors, each returning {"buy": P(buy)} (and, for the
multi-task model, the auxiliary probabilities). One trainer serves them all (ml/train/trainer.py)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ml.features.feature_map import FeatureMap
from ml.models.layers import (
    DenseFields,
    Embeddings,
    Experts,
    KeptWeights,
    LocalActivation,
    SqueezeExcitation,
    first_layer,
    fm_second_order_of_fields,
    gate,
    mlp,
    run_mlp,
)


@dataclass
class ModelConfig:
    """Hyper-parameters of every model (each uses the ones it needs); logged to MLflow as params."""

    embed_dim: int = 16
    # a per-user embedding memorises each training user's base rate and overfits weekly samples; the user
    # is described by their features and behaviour sequence instead, unless this is set
    user_embedding: bool = False
    hidden: list[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.2
    attention_hidden: list[int] = field(default_factory=lambda: [64, 32])
    n_experts: int = 4
    expert_hidden: list[int] = field(default_factory=lambda: [128, 64])
    ple_layers: int = 2
    ple_specific_experts: int = 2
    ple_shared_experts: int = 2
    lstm_hidden: int = 32

    def to_dict(self) -> dict:
        return asdict(self)


class CrowdModel(nn.Module):
    """Shared plumbing: the embeddings and the sizes they come from."""

    tasks: tuple[str, ...] = ("buy",)
    # what the model reads besides the ids and dense features: its batches hold only that (CrowdData.batch)
    reads_sequences: bool = False
    reads_series: bool = False

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_dense = len(fmap.dense)
        self.emb = Embeddings(fmap, cfg.embed_dim)
        self.n_id = len(fmap.id_fields) - (0 if cfg.user_embedding else 1)

    def id_fields(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb.fields(ids, with_user=self.cfg.user_embedding)

    @property
    def reads(self) -> dict[str, bool]:
        """The collate's options for this model's batches (CrowdData.batch's keywords)."""
        return {"sequences": self.reads_sequences, "series": self.reads_series}

    def output_bias(self) -> torch.Tensor:
        """The bias added last to the buy logit."""
        raise NotImplementedError

    def init_base_rate(self, labels: np.ndarray, weights: np.ndarray) -> None:
        """Start the output at the training labels' base rate in the population (columns as in
        CrowdData.labels: buy, then collect or cart; rows at their population weights) instead of 0.5.

        With about 1% buyers, an output starting at 0.5 spends the first steps pulling every logit down, and
        the weights that do it fastest are those of the largest inputs: the most active pairs, which are the
        buyers. An early model then ranks backwards (AUC 0.18 after one epoch on a small Taobao task)."""
        with torch.no_grad():
            self.output_bias().fill_(_logit(np.average(labels[:, 0], weights=weights)))


class DNN(CrowdModel):
    """Embeddings of the ids and the dense features, concatenated, through an MLP with ReLU."""

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__(fmap, cfg)
        d_in = self.n_id * cfg.embed_dim + self.n_dense
        self.net = nn.Sequential(mlp([d_in, *cfg.hidden], cfg.dropout), nn.Linear(cfg.hidden[-1], 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = torch.cat([self.id_fields(batch["ids"]).flatten(1), batch["dense"]], dim=-1)
        return {"buy": torch.sigmoid(run_mlp(self.net, x).squeeze(-1))}

    def output_bias(self) -> torch.Tensor:
        return self.net[-1].bias


class DeepFM(CrowdModel):
    """Linear part + FM second-order part + DNN (batch norm, dropout), summed before the sigmoid. Dense
    features enter the FM as fields (value x vector)."""

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__(fmap, cfg)
        self.linear_ids = nn.ModuleDict({v: nn.Embedding(n, 1, padding_idx=0) for v, n in fmap.sizes.items()})
        for t in self.linear_ids.values():
            nn.init.zeros_(t.weight)
        self.linear_dense = nn.Linear(self.n_dense, 1)
        nn.init.zeros_(self.linear_dense.weight)  # first-order terms start at zero, as the id ones do
        self.dense_fields = DenseFields(self.n_dense, cfg.embed_dim)
        self.first_layer_cache = KeptWeights()  # first_layer's combined weights while they do not change
        d_in = (self.n_id + self.n_dense) * cfg.embed_dim
        self.deep = nn.Sequential(mlp([d_in, *cfg.hidden], cfg.dropout, batch_norm=True), nn.Linear(cfg.hidden[-1], 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = batch["ids"]
        linear = self.linear_dense(batch["dense"]).squeeze(-1)
        for i, v in enumerate(self.emb.fields_of):
            if v != "user" or self.cfg.user_embedding:
                linear = linear + self.linear_ids[v](ids[:, i]).squeeze(-1)
        # the fields [id fields, dense value x vector], never built: see DenseFields
        id_fields, dense, vectors = self.id_fields(ids), batch["dense"], self.dense_fields.weight
        mlp_in, first = self.deep[0][0], self.deep[0][1:]
        (h,) = first_layer([mlp_in], id_fields, dense, vectors, cache=self.first_layer_cache)
        deep = self.deep[1](run_mlp(first, h, own_input=True)).squeeze(-1)
        logit = linear + fm_second_order_of_fields(id_fields, dense, vectors) + deep
        return {"buy": torch.sigmoid(logit)}

    def output_bias(self) -> torch.Tensor:
        return self.deep[-1].bias

    def init_base_rate(self, labels: np.ndarray, weights: np.ndarray) -> None:
        with torch.no_grad():
            self.linear_dense.bias.zero_()  # one bias carries the base rate
        super().init_base_rate(labels, weights)


class DIN(CrowdModel):
    """Deep Interest Network: the candidate target (and its category) attends over the behaviour sequence
    through a local activation unit."""

    reads_sequences = True

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__(fmap, cfg)
        e = cfg.embed_dim
        self.context = nn.Linear(2 * e, 2 * e)  # action and age, added to each behaviour's key
        self.attention = LocalActivation(2 * e, tuple(cfg.attention_hidden))
        self.d_repr = self.n_id * e + 2 * e + self.n_dense
        self.head = nn.Sequential(mlp([self.d_repr, *cfg.hidden], cfg.dropout, activation=nn.PReLU),
                                  nn.Linear(cfg.hidden[-1], 1))

    def interest(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The candidate's attention over each row's behaviours, packed (LocalActivation.pooled). A behaviour's
        key is its target and category, plus context(its action and age), built once per distinct behaviour of
        the batch's sequences (CrowdData.batch). The context Linear of the embeddings is taken of each embedding
        table once (a few dozen rows) and looked up: the same function as the Linear of every behaviour's."""
        e, rows = self.emb, batch["hist_row"]
        w_action, w_age = self.context.weight.split(e.dim, dim=1)
        # through the Embedding modules (not their weights), so that their padding rows keep no gradient
        every_action = F.linear(e.action(torch.arange(e.action.num_embeddings, device=rows.device)), w_action)
        every_age = F.linear(e.age(torch.arange(e.age.num_embeddings, device=rows.device)), w_age, self.context.bias)
        # one table of every (action, age): one lookup per behaviour
        context = (every_action.unsqueeze(1) + every_age.unsqueeze(0)).flatten(0, 1)
        at = batch["hist_action"] * e.age.num_embeddings + batch["hist_age"]
        keys = torch.cat([e.tables["target"](batch["hist_target"]), e.tables["category"](batch["hist_category"])],
                         dim=-1) + context.index_select(0, at)
        pooled, _ = self.attention.pooled(e.candidate(batch["ids"]), keys, rows, batch["hist_count"],
                                          batch["hist_index"])
        return pooled

    def representation(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.id_fields(batch["ids"]).flatten(1), self.interest(batch), batch["dense"]], dim=-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"buy": torch.sigmoid(run_mlp(self.head, self.representation(batch)).squeeze(-1))}

    def output_bias(self) -> torch.Tensor:
        return self.head[-1].bias  # MoE's head too


class MoE(DIN):
    """Experts and a softmax gate on top of the DIN representation."""

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__(fmap, cfg)
        self.experts = Experts(cfg.n_experts, self.d_repr, cfg.expert_hidden, cfg.dropout)
        self.gate = nn.Linear(self.d_repr, cfg.n_experts)
        self.head = nn.Sequential(mlp([cfg.expert_hidden[-1], 32]), nn.Linear(32, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self.representation(batch)
        return {"buy": torch.sigmoid(run_mlp(self.head, gate(self.gate(x), self.experts(x))).squeeze(-1))}


class PLE(DIN):
    """Multi-task: SE re-weighting of the fields, DIN interest, progressive layers of task-specific and
    shared experts with gates, FM-based towers; ESMM-style outputs
        y1 = P(collect or cart), y2 = P(buy | neither), y3 = P(buy | collect or cart),
        P(buy) = y1 y3 + (1 - y1) y2, trained on BCE(buy) + BCE(collect or cart)."""

    tasks = ("buy", "collect_cart")

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__(fmap, cfg)
        e = cfg.embed_dim
        self.dense_fields = DenseFields(self.n_dense, e)
        self.n_fields = self.n_id + self.n_dense
        self.se = SqueezeExcitation(self.n_fields)
        d_in = self.n_fields * e + 2 * e
        width = cfg.expert_hidden[-1]
        self.layers = nn.ModuleList()
        for i in range(cfg.ple_layers):
            d = d_in if i == 0 else width
            last = i == cfg.ple_layers - 1
            self.layers.append(nn.ModuleDict({
                "cc": Experts(cfg.ple_specific_experts, d, cfg.expert_hidden, cfg.dropout),
                "buy": Experts(cfg.ple_specific_experts, d, cfg.expert_hidden, cfg.dropout),
                "shared": Experts(cfg.ple_shared_experts, d, cfg.expert_hidden, cfg.dropout),
                "gate_cc": nn.Linear(d, cfg.ple_specific_experts + cfg.ple_shared_experts),
                "gate_buy": nn.Linear(d, cfg.ple_specific_experts + cfg.ple_shared_experts),
                **({} if last else
                   {"gate_shared": nn.Linear(d, 2 * cfg.ple_specific_experts + cfg.ple_shared_experts)}),
            }))
        self.towers = nn.ModuleDict({t: nn.Sequential(mlp([width, 32]), nn.Linear(32, 1)) for t in ("y1", "y2", "y3")})
        self.fm_scale = nn.ParameterDict({t: nn.Parameter(torch.zeros(1)) for t in ("y1", "y2", "y3")})
        self.head = None  # PLE has towers instead of DIN's head
        self.last_se_weights: torch.Tensor | None = None
        self.first_layer_cache = KeptWeights()  # first_layer's combined weights while they do not change

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # the fields [id fields, dense value x vector], re-weighted by SE, are never built (see DenseFields):
        # SE squeezes each field to its mean, a dense field's is its value times its vector's mean
        id_fields, dense, vectors = self.id_fields(batch["ids"]), batch["dense"], self.dense_fields.weight
        weights = self.se.net(torch.cat([id_fields.mean(dim=-1), dense * vectors.mean(dim=-1)], dim=1))
        self.last_se_weights = weights.detach()
        id_fields, dense = id_fields * weights[:, :self.n_id, None], dense * weights[:, self.n_id:]
        interest = self.interest(batch)
        h_cc = h_buy = h_shared = None
        for i, layer in enumerate(self.layers):
            branches = [layer[b].experts for b in ("cc", "buy", "shared")]
            gates = [layer[g] for g in ("gate_cc", "gate_buy", "gate_shared") if g in layer]
            if i == 0:  # every expert and gate reads the same input: their first layers are one product
                firsts = first_layer([e[0] for experts in branches for e in experts] + gates, id_fields, dense,
                                     vectors, tail=interest, cache=self.first_layer_cache)
                outs = iter(firsts)
                # each expert's columns of the one product are its own (run_mlp may overwrite them)
                e_cc, e_buy, e_sh = (torch.stack([run_mlp(e[1:], next(outs), own_input=True) for e in experts],
                                                 dim=1) for experts in branches)
                g_cc, g_buy, *g_sh = list(outs)
            else:
                e_cc, e_buy, e_sh = layer["cc"](h_cc), layer["buy"](h_buy), layer["shared"](h_shared)
                g_cc, g_buy = layer["gate_cc"](h_cc), layer["gate_buy"](h_buy)
                g_sh = [layer["gate_shared"](h_shared)] if "gate_shared" in layer else []
            new_cc = gate(g_cc, torch.cat([e_cc, e_sh], dim=1))
            new_buy = gate(g_buy, torch.cat([e_buy, e_sh], dim=1))
            if g_sh:
                h_shared = gate(g_sh[0], torch.cat([e_cc, e_buy, e_sh], dim=1))
            h_cc, h_buy = new_cc, new_buy
        fm = fm_second_order_of_fields(id_fields, dense, vectors)
        logit = {t: run_mlp(self.towers[t], h).squeeze(-1) + self.fm_scale[t] * fm
                 for t, h in (("y1", h_cc), ("y2", h_buy), ("y3", h_buy))}
        y1, y2, y3 = (torch.sigmoid(logit[t]) for t in ("y1", "y2", "y3"))
        return {"buy": y1 * y3 + (1 - y1) * y2, "collect_cart": y1}

    def init_base_rate(self, labels: np.ndarray, weights: np.ndarray) -> None:
        """Each tower at its own rate: y1 = P(collect or cart), y2 = P(buy | neither), y3 = P(buy | either)."""
        buy, cc = labels[:, 0] > 0, labels[:, 1] > 0

        def rate(rows: np.ndarray) -> float:
            return float(np.average(buy[rows], weights=weights[rows])) if rows.any() else float(
                np.average(buy, weights=weights))

        rates = {"y1": float(np.average(cc, weights=weights)), "y2": rate(~cc), "y3": rate(cc)}
        with torch.no_grad():
            for tower, rate in rates.items():
                self.towers[tower][-1].bias.fill_(_logit(rate))


class TwoTimescaleLSTM(CrowdModel):
    """The user-profile tag model: one LSTM over monthly buy counts by category, one over daily click
    counts by category, fused by a dense layer with the sample's fields (the candidate's embeddings and the
    dense features of the user, the target and the pair).

    The seed's model fused the two LSTMs with the candidate's embeddings only. For a user-level tag that is
    the whole input, but to rank a brand's buyers it left out everything about the user and the brand
    together, which the series cannot carry (they are per category slot, and the top slots are few): on
    the default task it reached 0.8785 AUC against 0.96 for the other deep models. The series stay its own
    part, the pair's fields come in beside them."""

    reads_series = True

    def __init__(self, fmap: FeatureMap, cfg: ModelConfig):
        super().__init__(fmap, cfg)
        slots = fmap.series_shape["month"][1]
        self.monthly = nn.LSTM(slots, cfg.lstm_hidden, batch_first=True)
        self.daily = nn.LSTM(slots, cfg.lstm_hidden, batch_first=True)
        d_in = 2 * cfg.lstm_hidden + self.n_id * cfg.embed_dim + self.n_dense
        self.fuse = nn.Sequential(mlp([d_in, *cfg.hidden], cfg.dropout), nn.Linear(cfg.hidden[-1], 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        # the series are a user's (on a date), batched once per distinct one (CrowdData.batch): each row reads
        # its user's final states, so a user scored for every target runs the LSTMs once
        _, (h_month, _) = self.monthly(batch["month"])
        _, (h_day, _) = self.daily(batch["day"])
        series = torch.cat([h_month[-1], h_day[-1]], dim=-1).index_select(0, batch["series_index"])
        x = torch.cat([series, self.id_fields(batch["ids"]).flatten(1), batch["dense"]], dim=-1)
        return {"buy": torch.sigmoid(run_mlp(self.fuse, x).squeeze(-1))}

    def output_bias(self) -> torch.Tensor:
        return self.fuse[-1].bias


def _logit(rate: float) -> float:
    rate = min(max(float(rate), 1e-4), 1 - 1e-4)
    return math.log(rate / (1 - rate))


# the ModelConfig fields each model reads: its MLflow run logs these, not every architecture's
_BASE = ("embed_dim", "user_embedding", "dropout")
MODEL_FIELDS: dict[str, tuple[str, ...]] = {
    "dnn": (*_BASE, "hidden"),
    "deepfm": (*_BASE, "hidden"),
    "din": (*_BASE, "hidden", "attention_hidden"),
    "moe": (*_BASE, "attention_hidden", "n_experts", "expert_hidden"),
    "ple": (*_BASE, "attention_hidden", "expert_hidden", "ple_layers", "ple_specific_experts", "ple_shared_experts"),
    "lstm": (*_BASE, "hidden", "lstm_hidden"),
}


def model_hyper_parameters(name: str, cfg: ModelConfig) -> dict:
    return {k: getattr(cfg, k) for k in MODEL_FIELDS[name]}


MODELS: dict[str, type[CrowdModel]] = {
    "dnn": DNN, "deepfm": DeepFM, "din": DIN, "moe": MoE, "ple": PLE, "lstm": TwoTimescaleLSTM,
}
NEEDS_SERIES = {"lstm"}


def build_model(name: str, fmap: FeatureMap, cfg: ModelConfig | None = None) -> CrowdModel:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: expected one of {sorted(MODELS)} (or lgbm)")
    return MODELS[name](fmap, cfg or ModelConfig())
