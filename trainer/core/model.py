"""The Embedding & MLP CTR model (docs/method.md §5).

The forward pass is a pure function of a parameter mapping so the meta
generator can score *generated* parameters (and compact tables holding only
the rows a batch touches) through the same code as the base model.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.core.config import ModelConfig
from trainer.core.features import Examples
from trainer.core.metrics import auc, logloss

Params = dict[str, Tensor]

# parameter name → the Examples fields that index it
EMBEDDING_TABLES: dict[str, tuple[str, ...]] = {
    "user_emb": ("user",),
    "item_emb": ("item", "hist_items"),
    "cat_emb": ("item_cats", "hist_cats"),
}


def _lookup(table: Tensor, index: Tensor) -> Tensor:
    """``table``'s rows at ``index`` (any shape). index_select, not F.embedding or
    ``table[index]``: its backward, index_add_, measured ~2.5x cheaper than
    F.embedding's on the meta generator's compact tables and a little cheaper
    on full ones (index_put's, ``table[index]``'s, is far dearer)."""
    return table.index_select(0, index.reshape(-1)).view(*index.shape, table.shape[1])


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the second-to-last axis where ``mask`` is true; zeros if none."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(-2) / weights.sum(-2).clamp(min=1.0)


# Tables of at most this many rows (the meta generator's compact tables, which
# hold only the rows a batch touches) are averaged through one dense weights
# matrix: there a gather per lookup, and a backward that sorts every lookup,
# cost ~4x more. On full tables the matrix itself would be the cost.
DENSE_MEAN_MAX_ROWS = 256


def _weights_matrix(index: Tensor, weights: Tensor, rows: int) -> Tensor:
    """``[N, rows]``: the total weight row n gives each table row (``index [N, K]``, -1 = none, weight 0)."""
    matrix = weights.new_zeros(index.shape[0], rows)
    if not rows:  # no row to point at: padding alone, nothing to add
        return matrix
    return matrix.scatter_add_(1, index.clamp(min=0).long(), weights)


def _dense_means(table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
    """``Σ_k weights[n, k] · table[index[n, k]]`` per row n (``index [N, K]``, -1 = none, weight 0)."""
    return _weights_matrix(index, weights, table.shape[0]) @ table


def _mean_weights(index: Tensor) -> Tensor:
    """1/count for each valid (``>= 0``) entry of ``index [..., K]``, 0 elsewhere."""
    valid = (index >= 0).float()
    return valid / valid.sum(-1, keepdim=True).clamp(min=1.0)


def _category_means(table: Tensor, cats: Tensor) -> Tensor:
    """Mean category vector per row of ``cats [..., C]`` (``-1`` = none)."""
    if cats.shape[-1] > 1 and table.shape[0] <= DENSE_MEAN_MAX_ROWS:
        flat = cats.reshape(-1, cats.shape[-1])
        means = _dense_means(table, flat, _mean_weights(flat))
        return means.reshape(*cats.shape[:-1], table.shape[1])
    # an extra zero row stands for padding; embedding_bag leaves it out of the mean
    padded = torch.cat([table, table.new_zeros(1, table.shape[1])])
    if cats.shape[-1] == 1:  # one category or none: the mean is the row itself, at a fifth of the cost
        return _lookup(padded, torch.where(cats[..., 0] >= 0, cats[..., 0], table.shape[0]))
    flat = torch.where(cats >= 0, cats, table.shape[0]).reshape(-1, cats.shape[-1])
    means = F.embedding_bag(flat, padded, mode="mean", padding_idx=table.shape[0])
    return means.reshape(*cats.shape[:-1], table.shape[1])


def _item_vectors(params: Mapping[str, Tensor], items: Tensor, cats: Tensor) -> Tensor:
    item_vec = _lookup(params["item_emb"], items.clamp(min=0))
    return torch.cat([item_vec, _category_means(params["cat_emb"], cats)], dim=-1)


class _WeightedBag(torch.autograd.Function):
    """``Σ_k weights[n, k] · table[index[n, k]]`` per row n. embedding_bag's
    forward is ~5x faster than a gather and a weighted sum, but its backward
    sorts every lookup; index_add_ of the weighted gradients is ~5x faster."""

    @staticmethod
    def forward(ctx: Any, table: Tensor, index: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(index, weights)
        ctx.rows = table.shape[0]
        return F.embedding_bag(index, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        index, weights = ctx.saved_tensors
        # columns first: index_add_ along the last axis of [c, rows] measured ~1.7x
        # faster than along the rows of [rows, c] (c = 8, ~90k lookups). With the
        # transposed gradient contiguous, the product comes out [c, N, K] and
        # flattens in place; from the view it came out columns innermost and
        # reshape copied it (0.50 → 0.20 ms for 92k lookups)
        per_lookup = (grad.t().contiguous().unsqueeze(-1) * weights).reshape(grad.shape[-1], -1)
        table_grad = grad.new_zeros(grad.shape[-1], ctx.rows).index_add_(1, index.reshape(-1), per_lookup)
        return table_grad.t(), None, None


class CategoryMix(NamedTuple):
    """The category halves of a set of examples' inputs, as weights: per
    example, the weight each of ``rows`` (category rows, ascending) has in the
    candidate's and in the history's mean category vector. They depend on the
    data alone, so the meta generator makes them once per period; a batch then
    takes one product per half instead of a pass over every history category."""

    rows: Tensor  # [U]
    item: Tensor  # [N, U]
    history: Tensor  # [N, U]

    def select(self, index: Tensor) -> CategoryMix:
        return CategoryMix(self.rows, self.item.index_select(0, index), self.history.index_select(0, index))


class _Catalogue(NamedTuple):
    """The items a set of histories names, with their categories."""

    cats: Tensor  # [I, C]: each item row's categories, -1 padded
    slots: Tensor  # [N, L]: each history slot's row in ``cats``; I for padding and odd slots
    odd: Tensor  # [K]: the slots (flat, n·L + l) naming other categories than ``cats`` keeps for their item


def _history_catalogue(hist_items: Tensor, hist_cats: Tensor) -> _Catalogue:
    """The items of the histories, each with the categories one of its slots
    names. The others almost always name the same; the odd ones out (a hashed
    row standing for several items, an item's categories changed between
    events) are listed, to be added slot by slot."""
    flat = hist_items.reshape(-1).long() + 1  # row 0: padding
    cats = hist_cats.reshape(len(flat), hist_cats.shape[-1])
    size = int(flat.max()) + 1 if len(flat) else 1
    # one slot standing for each item row (any: the others are checked against it)
    first = torch.full((size,), -1, dtype=torch.long).index_copy_(0, flat, torch.arange(len(flat)))
    # categories compared in int64 pairs where they pair up, and the columns' flags or-ed:
    # any() over rows this short is a slow reduction (96,780 slots: 1.9 → 1.5 ms a period)
    words = cats.view(torch.int64) if cats.element_size() == 4 and cats.shape[1] % 2 == 0 else cats
    differ = words.index_select(0, first.index_select(0, flat)) != words
    mismatch = torch.zeros(len(flat), dtype=torch.bool)
    for column in differ.unbind(1):
        mismatch |= column
    odd = mismatch & (flat > 0)  # row 0 is padding's
    items = (first[1:] >= 0).nonzero().squeeze(1) + 1
    position = torch.full((size,), len(items), dtype=torch.long)  # padding: the zero row after the items'
    position[items] = torch.arange(len(items))
    slots = position.index_select(0, flat).masked_fill_(odd, len(items))
    item_cats = cats.index_select(0, first.index_select(0, items))
    return _Catalogue(item_cats, slots.view(hist_items.shape), odd.nonzero().squeeze(1))


def category_mix(ex: Examples, buckets: int, max_rows: int = DENSE_MEAN_MAX_ROWS) -> CategoryMix | None:
    """``ex``'s :class:`CategoryMix` (``buckets``: the category table's rows);
    None where it names more than ``max_rows`` categories, as the matrices
    would then cost more than they save.

    A history's weights are the mean of its items' category weights: a
    weighted bag over one row of weights per item, a pass over the N·L slots
    where weighing each slot's categories is a scatter over N·L·C (~3x dearer);
    the few odd slots (see :func:`_history_catalogue`) are added one by one."""
    catalogue = _history_catalogue(ex.hist_items, ex.hist_cats)
    odd_cats = ex.hist_cats.view(-1, ex.hist_cats.shape[-1]).index_select(0, catalogue.odd)
    used = torch.zeros(buckets + 1, dtype=torch.bool)  # -1, padding, marks the last place
    for cats in (ex.item_cats, catalogue.cats, odd_cats):
        used.index_fill_(0, cats.reshape(-1).long(), True)
    rows = used[:-1].nonzero().squeeze(1)
    if len(rows) > max_rows:
        return None
    # position[r + 1]: row r's column; padding (r = -1) goes to column 0, with weight 0
    position = torch.zeros(buckets + 1, dtype=torch.long)
    position[rows + 1] = torch.arange(len(rows))

    def columns(cats: Tensor) -> Tensor:
        return position.index_select(0, (cats + 1).reshape(-1)).view(cats.shape)

    item = _weights_matrix(columns(ex.item_cats), _mean_weights(ex.item_cats), len(rows))
    per_item = _weights_matrix(columns(catalogue.cats), _mean_weights(catalogue.cats), len(rows))
    share = _mean_weights(ex.hist_items)  # each slot's share of its history
    history = F.embedding_bag(
        catalogue.slots, torch.cat([per_item, per_item.new_zeros(1, len(rows))]), per_sample_weights=share, mode="sum"
    )
    if len(catalogue.odd) and len(rows):
        odd_weights = _mean_weights(odd_cats) * share.reshape(-1, 1).index_select(0, catalogue.odd)
        owner = (catalogue.odd // max(1, ex.hist_items.shape[1])).unsqueeze(1).expand_as(odd_cats)
        history.index_put_((owner, columns(odd_cats)), odd_weights, accumulate=True)
    return CategoryMix(rows, item, history)


def _history_vector(params: Mapping[str, Tensor], items: Tensor, cats: Tensor) -> Tensor:
    """Mean item vector of each history ``items [B, L]`` (``-1`` = padding)."""
    if params["cat_emb"].shape[0] > DENSE_MEAN_MAX_ROWS:
        return _masked_mean(_item_vectors(params, items, cats), items >= 0)
    # compact tables: the same mean as weights, each category's weight folded in
    per_cat = _history_category_weights(items, cats)
    cat_part = _dense_means(params["cat_emb"], cats.reshape(items.shape[0], -1), per_cat)
    return torch.cat([_history_items(params["item_emb"], items), cat_part], dim=-1)


def _history_category_weights(items: Tensor, cats: Tensor) -> Tensor:
    """``[B, L·C]``: each history category's weight in the history's mean category
    vector (its item's share of the history, split among the item's categories)."""
    return (_mean_weights(cats) * _mean_weights(items).unsqueeze(-1)).reshape(items.shape[0], -1)


def _history_items(table: Tensor, items: Tensor) -> Tensor:
    """The item half of the history vector, on a compact table."""
    return _WeightedBag.apply(table, items.clamp(min=0).long(), _mean_weights(items))


def _mf(user: Tensor, item: Tensor, bias: Tensor) -> Tensor:
    """Matrix factorisation: the last column of each table is the id's bias."""
    return (user[:, :-1] * item[:, :-1]).sum(-1) + user[:, -1] + item[:, -1] + bias


def _mlp(params: Mapping[str, Tensor], x: Tensor, n_layers: int, first: int = 0) -> Tensor:
    """Layers ``first`` to the last of the MLP on ``x``."""
    for i in range(first, n_layers):
        x = F.linear(x, params[f"mlp.{i}.weight"], params[f"mlp.{i}.bias"])
        if i < n_layers - 1:
            x = F.relu(x)
    return x.squeeze(-1)


def mf_logits(params: Mapping[str, Tensor], ex: Examples) -> Tensor:
    return _mf(_lookup(params["user_emb"], ex.user), _lookup(params["item_emb"], ex.item), params["bias"])


def logits(params: Mapping[str, Tensor], ex: Examples, n_layers: int, mix: CategoryMix | None = None) -> Tensor:
    """Pre-sigmoid scores for ``ex`` under ``params`` (``n_layers`` 0: matrix factorisation).

    With ``mix`` (``ex``'s rows of it) the category halves come from its weights
    and ``params["cat_emb"]`` holds the rows ``mix.rows``, in that order;
    ``ex``'s own category fields are not read."""
    if n_layers == 0:
        return mf_logits(params, ex)
    return _mlp(params, _mlp_inputs(params, ex, None if mix is None else [mix]), n_layers)


def _mlp_inputs(params: Mapping[str, Tensor], ex: Examples, mixes: Sequence[CategoryMix] | None) -> Tensor:
    """The MLP's input rows: ``[user, history, candidate]`` vectors (see :func:`logits`).
    With ``mixes``, one per part of ``ex`` in order, ``params["cat_emb"]`` holds
    each part's category rows, the parts' end to end."""
    user_vec = _lookup(params["user_emb"], ex.user)
    if mixes is None:
        candidate = _item_vectors(params, ex.item, ex.item_cats)
        history = _history_vector(params, ex.hist_items, ex.hist_cats)
    else:
        # a product per part: one block-diagonal product measured ~2x dearer
        cats = params["cat_emb"].split([len(m.rows) for m in mixes])
        item_cats = torch.cat([m.item @ c for m, c in zip(mixes, cats, strict=True)])
        hist_cats = torch.cat([m.history @ c for m, c in zip(mixes, cats, strict=True)])
        candidate = torch.cat([_lookup(params["item_emb"], ex.item.clamp(min=0)), item_cats], dim=-1)
        history = torch.cat([_history_items(params["item_emb"], ex.hist_items), hist_cats], dim=-1)
    return torch.cat([user_vec, history, candidate], dim=-1)


def parts_logits(
    tables: Mapping[str, Tensor],
    heads: Mapping[str, Tensor],
    ex: Examples,
    sizes: Sequence[int],
    n_layers: int,
    mixes: Sequence[CategoryMix] | None = None,
) -> Tensor:
    """:func:`logits` of ``ex`` made of parts of ``sizes`` rows, each part under
    its own parameters: the embedding tables ``tables`` are shared (each part's
    indices point at its own rows of them) and ``heads[name]`` stacks the parts'
    other parameters, ``[P, ...]``. One lookup pass serves every part, and each
    dense layer is one batched product over the parts. ``mixes``: each part's
    category weights, its category rows in ``tables["cat_emb"]`` one part
    after another."""
    counts = torch.tensor(list(sizes))
    if n_layers == 0:  # each row under its part's bias
        return mf_logits({**tables, "bias": heads["bias"].repeat_interleave(counts)}, ex)
    x = _mlp_inputs(tables, ex, mixes)
    # the parts padded to the longest, [P, longest, ·]: row r of part p at p·longest + r
    longest = max(sizes)
    place = torch.arange(len(x)) + (torch.arange(len(sizes)) * longest - counts.cumsum(0) + counts).repeat_interleave(
        counts
    )
    h = x.new_zeros(len(sizes) * longest, x.shape[1]).index_copy(0, place, x).view(len(sizes), longest, -1)
    for i in range(n_layers):
        weight, bias = heads[f"mlp.{i}.weight"], heads[f"mlp.{i}.bias"]
        h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        if i < n_layers - 1:
            h = F.relu(h)
    return h.view(-1).index_select(0, place)


def request_logits(
    params: Mapping[str, Tensor],
    users: Tensor,
    hist_items: Tensor,
    hist_cats: Tensor,
    items: Tensor,
    item_cats: Tensor,
    owner: Tensor,
    n_layers: int,
) -> Tensor:
    """:func:`logits` for the candidates of several requests at once, each
    request's user and history computed once, not once per candidate.

    ``users [R]``, ``hist_items [R, L]`` and ``hist_cats [R, L, C]`` describe
    the R requests; ``items [N]`` and ``item_cats [N, C]`` are all their
    candidates, ``owner [N]`` the request each belongs to."""
    user_vec = F.embedding(users, params["user_emb"])
    if n_layers == 0:
        return _mf(user_vec[owner], F.embedding(items, params["item_emb"]), params["bias"])
    history = _history_vector(params, hist_items, hist_cats)
    # The first layer's product splits by input: [user, history] · W_r once per request,
    # plus candidate · W_c per candidate; 60% fewer multiplications at the widest layer.
    weight, bias = params["mlp.0.weight"], params["mlp.0.bias"]
    split = user_vec.shape[1] + history.shape[1]
    per_request = F.linear(torch.cat([user_vec, history], dim=-1), weight[:, :split], bias)
    x = torch.addmm(per_request.index_select(0, owner), _item_vectors(params, items, item_cats), weight[:, split:].t())
    if n_layers == 1:
        return x.squeeze(-1)
    return _mlp(params, F.relu(x), n_layers, first=1)


class EmbMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        m = config.embedding_dim
        if config.kind == "mf":
            # one more column per id: its bias
            self.user_emb = nn.Parameter(torch.empty(config.user_buckets, m + 1))
            self.item_emb = nn.Parameter(torch.empty(config.item_buckets, m + 1))
            self.bias = nn.Parameter(torch.zeros(()))
        else:
            self.user_emb = nn.Parameter(torch.empty(config.user_buckets, m))
            self.item_emb = nn.Parameter(torch.empty(config.item_buckets, m))
            self.cat_emb = nn.Parameter(torch.empty(config.category_buckets, m))
            sizes = (config.mlp_input, *config.hidden, 1)
            self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.reset_parameters()

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.xavier_uniform_(p)
        if self.config.kind == "mf":
            with torch.no_grad():
                self.user_emb[:, -1].zero_()
                self.item_emb[:, -1].zero_()

    def forward(self, ex: Examples) -> Tensor:
        return logits(dict(self.named_parameters()), ex, self.n_layers)

    def params(self) -> Params:
        """A detached copy of the current parameters."""
        return {name: p.detach().clone() for name, p in self.named_parameters()}

    def load_params(self, params: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(params[name])


def seeded_model(config: ModelConfig, seed: int) -> EmbMLP:
    """A freshly initialised model, the same for the same seed, leaving the global RNG as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return EmbMLP(config)


@torch.inference_mode()
def predict(
    params: Mapping[str, Tensor],
    ex: Examples,
    n_layers: int,
    batch_size: int = 16384,
    partners: Sequence[Mapping[str, Tensor]] = (),
) -> Tensor:
    """Click probabilities for every row of ``ex``; with ``partners``, of the ensemble
    that averages the logits of ``params`` and theirs."""
    models = [params, *partners]
    out = []
    for i in range(0, len(ex), batch_size):
        part = ex.select(torch.arange(i, min(i + batch_size, len(ex))))
        out.append(torch.sigmoid(torch.stack([logits(m, part, n_layers) for m in models]).mean(0)))
    return torch.cat(out) if out else torch.empty(0)


def score(
    params: Mapping[str, Tensor], ex: Examples, n_layers: int, partners: Sequence[Mapping[str, Tensor]] = ()
) -> tuple[float, float]:
    """AUC and LogLoss of ``params`` (averaged in logits with ``partners``) on ``ex``
    (NaN for an empty set or one class)."""
    if not len(ex):
        return float("nan"), float("nan")
    probs = predict(params, ex, n_layers, partners=partners).numpy()
    labels = ex.label.numpy()
    return auc(labels, probs), logloss(labels, probs)


def checkpoint_bytes(config: ModelConfig, params: Mapping[str, Tensor], meta: Mapping[str, Any]) -> bytes:
    """A self-describing checkpoint: config, metadata and weights in one blob."""
    buffer = io.BytesIO()
    torch.save({"config": asdict(config), "meta": dict(meta), "params": dict(params)}, buffer)
    return buffer.getvalue()


def load_checkpoint(blob: bytes) -> tuple[ModelConfig, Params, dict[str, Any]]:
    state = torch.load(io.BytesIO(blob), weights_only=True)
    config = ModelConfig(**state["config"])
    return config, state["params"], state["meta"]
