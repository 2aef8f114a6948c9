"""Building blocks shared by the models: embeddings, MLP, FM, DIN's local activation unit, SE, experts."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ml.features.feature_map import N_ACTIONS, PAD, FeatureMap


class Embeddings(nn.Module):
    """One table per vocabulary, shared by the sample's id fields and the behaviour sequences. The fields
    are the feature map's (FeatureMap.id_fields), found by name."""

    def __init__(self, fmap: FeatureMap, dim: int):
        super().__init__()
        sizes, max_age = fmap.sizes, fmap.max_age
        self.fields_of = list(fmap.id_fields.values())  # the vocabulary of each id column, in order
        self.target_at, self.category_at = fmap.field_index("target_id"), fmap.field_index("target_category_id")
        self.tables = nn.ModuleDict({name: nn.Embedding(n, dim, padding_idx=PAD) for name, n in sizes.items()})
        self.action = nn.Embedding(N_ACTIONS, dim, padding_idx=PAD)
        self.age = nn.Embedding(max_age + 1, dim, padding_idx=PAD)
        self.dim = dim
        for t in [*self.tables.values(), self.action, self.age]:
            nn.init.normal_(t.weight, std=0.05)
            with torch.no_grad():
                t.weight[PAD].zero_()

    def fields(self, ids: torch.Tensor, with_user: bool = True) -> torch.Tensor:
        """[B, n_id_fields, dim]: user (unless with_user is false), target, target category, context."""
        return torch.stack([self.tables[v](ids[:, i]) for i, v in enumerate(self.fields_of)
                            if with_user or v != "user"], dim=1)

    def candidate(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, 2 dim]: the candidate target and its category, the query of the attention."""
        return torch.cat([self.tables["target"](ids[:, self.target_at]),
                          self.tables["category"](ids[:, self.category_at])], dim=-1)


class DenseFields(nn.Module):
    """Each dense feature as a field embedding (value x learned vector), so FM and SE can treat it as a field.

    The models never build the [B, D, dim] fields themselves: every use of them is linear in each field's
    vector, so it is computed from the values [B, D] (times any per-field factor) and the vectors [D, dim]
    (first_layer, fm_second_order_of_fields). A Linear over the flattened fields then costs D, not D x dim,
    multiply-adds per output: with 117 dense features the bulk of DeepFM's and PLE's arithmetic, the same function
    and the same parameters."""

    def __init__(self, n_dense: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_dense, dim) * 0.01)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.weight  # [B, D, dim]


class KeptWeights(dict):
    """first_layer's cache. Pickled or copied empty: its key names this process's tensors (their ids and
    storage), and a pickled or deep-copied model (torch.save of a module, copy.deepcopy) would otherwise carry a
    stale copy of the weights."""

    def __reduce__(self) -> tuple:
        return (KeptWeights, ())


def first_layer(linears: list[nn.Linear], ids: torch.Tensor, dense: torch.Tensor, vectors: torch.Tensor,
                tail: torch.Tensor | None = None, cache: KeptWeights | None = None) -> list[torch.Tensor]:
    """Each linear applied to cat([ids.flatten(1), (dense[..., None] * vectors).flatten(1), tail]), as one
    product for all of them: ids [B, n_id, dim] (id fields), dense [B, D] (dense values times any per-field
    factor), vectors [D, dim] (DenseFields.weight). The dense block of the weights is contracted with the
    vectors first ([out, D, dim] x [D, dim] -> [out, D]); then the inputs [ids, dense, tail] (a few hundred
    columns) meet the weights in one matrix product: a product per block and the sums of their [B, out] results
    took a third longer (PLE's forward, whose first layer is every expert's and gate's).

    cache: a KeptWeights the caller keeps (one per call site). Without autograd the combined weights are kept
    there, and built again only when a parameter has changed: they depend on the parameters alone, and building
    them (concatenating every expert's [out, D x dim] weights, then the contraction) took about a sixth of the
    CPU time of PLE's forward in torch's profiler, at every batch."""
    n_ids, with_tail = ids.shape[1] * ids.shape[2], tail is not None
    if cache is None or torch.is_grad_enabled():
        if cache:
            cache.clear()  # training: the weights move at every step
        weight_t, bias = _first_layer_weights(linears, n_ids, vectors, with_tail)
    else:
        # a parameter's _version moves at every in-place change (an optimiser step, load_state_dict, a no_grad
        # fill); a new tensor (.to(device), a replaced Parameter) has another id or storage
        params = [*(t for lin in linears for t in (lin.weight, lin.bias)), vectors]
        key = (*((id(t), t.data_ptr(), t._version) for t in params), n_ids, with_tail)
        if cache.get("key") != key:
            cache.update(key=key, weights=_first_layer_weights(linears, n_ids, vectors, with_tail))
        weight_t, bias = cache["weights"]
    inputs = [ids.flatten(1), dense] + ([tail] if with_tail else [])
    out = torch.addmm(bias, torch.cat(inputs, dim=1), weight_t)
    return list(out.split([lin.out_features for lin in linears], dim=1))


def _first_layer_weights(linears: list[nn.Linear], n_ids: int, vectors: torch.Tensor,
                         with_tail: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """first_layer's combined weights, transposed ([n_ids + D (+ the tail's), the outputs together]), and bias."""
    weight = torch.cat([lin.weight for lin in linears])
    bias = torch.cat([lin.bias for lin in linears])
    n_dense, dim = vectors.shape
    w_dense = torch.einsum("ode,de->od", weight[:, n_ids:n_ids + n_dense * dim].reshape(-1, n_dense, dim), vectors)
    blocks = [weight[:, :n_ids], w_dense]
    if with_tail:
        blocks.append(weight[:, n_ids + n_dense * dim:])
    return torch.cat(blocks, dim=1).T, bias


def fm_second_order_of_fields(ids: torch.Tensor, dense: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """fm_second_order(cat([ids, dense[..., None] * vectors], dim=1)) from the values and the vectors."""
    square_of_sum = (ids.sum(dim=1) + dense @ vectors).pow(2)
    sum_of_square = ids.pow(2).sum(dim=1) + dense.pow(2) @ vectors.pow(2)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=-1)


def mlp(sizes: list[int], dropout: float = 0.0, batch_norm: bool = False,
        activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers.append(nn.Linear(a, b))
        if batch_norm:
            layers.append(nn.BatchNorm1d(b))
        layers.append(activation())
        if dropout:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


# what run_mlp may overwrite in place: a Linear's and a BatchNorm's outputs are new tensors; Dropout (at scoring)
# and Identity hand their input on
_NEW_OUTPUT, _PASSES_ON = (nn.Linear, nn.BatchNorm1d), (nn.Dropout, nn.Identity)


def run_mlp(net: nn.Module, x: torch.Tensor, own_input: bool = False) -> torch.Tensor:
    """net(x) for an MLP (nested nn.Sequentials of Linear, BatchNorm1d, ReLU, PReLU, Dropout). Without autograd
    (scoring) each ReLU and one-slope PReLU overwrites the tensor it reads when that is a temporary: a Linear's
    or BatchNorm's output, or x itself when own_input (the caller's own temporary, read by nothing else).

    Why: at scoring, DIN's attention runs its MLP over every (row, behaviour) pair, about 19k rows a batch of
    2,048 on the default task, and an activation that allocates its output passes another few MB through memory
    for each layer: with the first layer's sums also in place (LocalActivation.pooled), DIN and MoE score more
    pairs a second (docs/models.md, "Scoring speed"). The same floats: PReLU with one slope w is leaky_relu with
    negative_slope w (float() of the slope waits for a GPU, as the scores of every batch do anyway)."""
    if torch.is_grad_enabled():
        return net(x)  # autograd keeps the activations' inputs
    fresh = own_input
    for layer in _leaves(net):
        if fresh and isinstance(layer, nn.ReLU):
            x = x.relu_()
        elif fresh and isinstance(layer, nn.PReLU) and layer.weight.numel() == 1:
            x = F.leaky_relu_(x, float(layer.weight))
        else:
            x, fresh = layer(x), isinstance(layer, _NEW_OUTPUT) or (fresh and isinstance(layer, _PASSES_ON))
    return x


def _leaves(net: nn.Module) -> list[nn.Module]:
    if isinstance(net, nn.Sequential):
        return [leaf for layer in net for leaf in _leaves(layer)]
    return [net]


def fm_second_order(fields: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> over fields [B, F, dim] -> [B]."""
    square_of_sum = fields.sum(dim=1).pow(2)
    sum_of_square = fields.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=-1)


class LocalActivation(nn.Module):
    """DIN's attention: a small MLP scores each behaviour against the candidate; padding scores exactly zero.

    Scores are not normalised over the sequence (as in the DIN paper, so intensity of interest is kept), and
    only the behaviours the mask keeps are pooled, so appending padding never changes the pooled interest.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 32)):
        super().__init__()
        self.dim = dim
        self.net = nn.Sequential(mlp([4 * dim, *hidden], activation=nn.PReLU), nn.Linear(hidden[-1], 1))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
                counts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query [B, D], keys [B, L, D] padded, mask [B, L], counts [B, L] (see `pooled`): the pooled interest
        [B, D] and each behaviour's score [B, L], zero where masked."""
        rows, cols = mask.nonzero(as_tuple=True)
        pooled, kept_scores = self.pooled(query, keys[rows, cols], rows, None if counts is None else counts[rows, cols])
        return pooled, kept_scores.new_zeros(mask.shape).index_put((rows, cols), kept_scores)

    def pooled(self, query: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor | None = None,
               index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The behaviours packed: keys [Mu, D] of the distinct behaviours, counts [Mu] how many times each
        occurred (ml.features.dataset.collapse_repeats; None: once); each row's are the pairs (rows [M],
        index [M]): the row, and the behaviour among the keys (None: the M keys in order). Returns the pooled
        interest [B, D] and the pairs' scores [M].

        Packed, only the behaviours a row holds go through the MLP: a batch padded to its longest sequence
        holds several times as many (and a padded behaviour's score would be zero whatever the MLP says). The
        rows of one user share their keys, whose part of the first layer is then taken once."""
        # The first layer reads [q, k, q - k, q * k] (the DIN paper's input). With its weight in four blocks,
        # W [q, k, q - k, q * k] = (Wq + Wd) q + (Wk - Wd) k + Wp (q * k): the query's part once per row, the
        # key's once per distinct behaviour, and no [M, 4 dim] concatenation. The same function and parameters
        # (a checkpoint loads either way).
        first = self.net[0][0]
        wq, wk, wd, wp = first.weight.split(self.dim, dim=1)
        # gathers by index_select: on the CPU several times faster than indexing with a tensor (tensor[index])
        by_key = F.linear(keys, wk - wd)
        if index is not None:
            keys, by_key = keys.index_select(0, index), by_key.index_select(0, index)
            counts = None if counts is None else counts.index_select(0, index)
        by_row = F.linear(query, wq + wd, first.bias).index_select(0, rows)
        by_pair = query.index_select(0, rows)
        if torch.is_grad_enabled():
            hidden = torch.addmm(by_key.add_(by_row), by_pair * keys, wp.T)
        else:  # scoring: the [M, hidden] sum built in place, no copy of it for addmm (see run_mlp)
            hidden = by_key.add_(by_row).addmm_(by_pair.mul_(keys), wp.T)
        scores = self.net[1](run_mlp(self.net[0][1:], hidden, own_input=True)).squeeze(-1)
        weights = scores if counts is None else scores * counts
        # index_add is deterministic on CUDA under torch.use_deterministic_algorithms (ml.train.trainer)
        pooled = keys.new_zeros(query.shape[0], keys.shape[1]).index_add(0, rows, weights.unsqueeze(-1) * keys)
        return pooled, scores


class SqueezeExcitation(nn.Module):
    """Re-weights the feature fields from a squeeze of each field; the weights are kept for the importance plot."""

    def __init__(self, n_fields: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, n_fields // reduction)
        self.net = nn.Sequential(nn.Linear(n_fields, hidden), nn.ReLU(), nn.Linear(hidden, n_fields), nn.Sigmoid())

    def forward(self, fields: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weights = self.net(fields.mean(dim=-1))  # [B, F]
        return fields * weights.unsqueeze(-1), weights


class Experts(nn.Module):
    """n expert MLPs applied to one input: [B, n, out]."""

    def __init__(self, n: int, d_in: int, hidden: list[int], dropout: float):
        super().__init__()
        self.experts = nn.ModuleList([mlp([d_in, *hidden], dropout) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([run_mlp(e, x) for e in self.experts], dim=1)


def gate(weights_logits: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Softmax gate over experts [B, n, out] -> [B, out]."""
    return (torch.softmax(weights_logits, dim=-1).unsqueeze(-1) * experts).sum(dim=1)
