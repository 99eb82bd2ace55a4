from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from trainer.core.config import ModelConfig, ModelKind
from trainer.core.features import (
    Examples,
    ItemRef,
    concat_examples,
    examples_from_refs,
    hash_id,
    history_rows,
    item_rows,
)
from trainer.core.model import (
    DENSE_MEAN_MAX_ROWS,
    EmbMLP,
    _category_means,
    category_mix,
    checkpoint_bytes,
    load_checkpoint,
    logits,
    parts_logits,
    request_logits,
)
from trainer.learning.updaters.asmg import compact_batches
from trainer.research.encoding import EncodedLog, hash_ids


def one_example(user: int, item: int, cats: list[int], hist: list[int], hist_cats: list[list[int]]) -> Examples:
    return Examples(
        user=torch.tensor([user], dtype=torch.int32),
        item=torch.tensor([item], dtype=torch.int32),
        item_cats=torch.tensor([cats], dtype=torch.int32),
        hist_items=torch.tensor([hist], dtype=torch.int32),
        hist_cats=torch.tensor([hist_cats], dtype=torch.int32),
        label=torch.tensor([1.0]),
    )


def test_default_sizes_follow_the_paper() -> None:
    model = EmbMLP(ModelConfig())
    assert [tuple(layer.weight.shape) for layer in model.mlp] == [(20, 40), (10, 20), (1, 10)]
    assert model.item_emb.shape[1] == 8


def test_padding_does_not_change_the_score(small_config: ModelConfig) -> None:
    params = EmbMLP(small_config).params()
    plain = one_example(1, 2, [3], [4, 5], [[6], [7]])
    padded = one_example(1, 2, [3, -1], [-1, 4, 5], [[-1, -1], [6, -1], [7, -1]])
    torch.testing.assert_close(logits(params, plain, 3), logits(params, padded, 3))


def test_history_is_the_mean_of_item_vectors(small_config: ModelConfig) -> None:
    params = EmbMLP(small_config).params()
    both = one_example(1, 2, [3], [4, 5], [[6], [7]])
    # the same history listed twice has the same mean
    doubled = one_example(1, 2, [3], [4, 5, 4, 5], [[6], [7], [6], [7]])
    torch.testing.assert_close(logits(params, both, 3), logits(params, doubled, 3))
    # an empty history is a zero vector, different from a non-empty one
    empty = one_example(1, 2, [3], [-1], [[-1]])
    assert not torch.allclose(logits(params, both, 3), logits(params, empty, 3))


def test_checkpoint_round_trip_rebuilds_the_model(small_config: ModelConfig, small_log: EncodedLog) -> None:
    model = EmbMLP(small_config)
    blob = checkpoint_bytes(small_config, model.params(), {"period": 7, "method": "iu"})
    config, params, meta = load_checkpoint(blob)
    assert config == small_config and meta == {"period": 7, "method": "iu"}
    rebuilt = EmbMLP(config)
    rebuilt.load_params(params)
    ex = small_log.examples(0, 50)
    torch.testing.assert_close(rebuilt(ex), model(ex))


def test_unseen_ids_hash_into_the_table_stably() -> None:
    rows = hash_ids(np.array(["a", "never-seen", "a", "42"], dtype=object), 1000, "item")
    assert rows[0] == rows[2] and all(0 <= r < 1000 for r in rows)
    assert hash_id("42", 1000, "item") == rows[3]


def test_hashing_spreads_ids_over_the_buckets() -> None:
    ids = np.array([str(i) for i in range(4000)], dtype=object)
    rows = hash_ids(ids, 1 << 16, "item")
    # uniform hashing of 4000 ids into 65,536 rows collides ~120 times
    assert len(ids) - len(set(rows.tolist())) < 200


@pytest.mark.parametrize("kind", ["emb-mlp", "mf"])
def test_requests_scored_together_score_as_their_rows_would(small_config: ModelConfig, kind: ModelKind) -> None:
    config = replace(small_config, kind=kind)
    model = EmbMLP(config)
    with torch.no_grad():  # non-zero biases and id biases, so every term counts
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    params = model.params()
    # three requests: different users, histories (one empty, one longer than history_length) and candidates
    users = [1, 7, 1]
    histories: list[list[ItemRef]] = [[], [(4, (6,)), (5, (7, 8))], [(k, (k % 5,)) for k in range(15)]]
    candidates: list[list[ItemRef]] = [[(2, (3,)), (9, ()), (11, (3, 12, 13))], [(2, (3,))], [(9, ()), (30, (1,))]]
    rows = examples_from_refs(
        [u for u, c in zip(users, candidates, strict=True) for _ in c],
        [ref for c in candidates for ref in c],
        [h for h, c in zip(histories, candidates, strict=True) for _ in c],
        [0.0] * 6,
        config,
    )
    items, item_cats = item_rows([ref for c in candidates for ref in c])
    hist_items, hist_cats = history_rows(histories, config.history_length)
    owner = torch.tensor([0, 0, 0, 1, 2, 2])
    together = request_logits(
        params, torch.tensor(users), hist_items, hist_cats, items, item_cats, owner, config.n_layers
    )
    torch.testing.assert_close(together, logits(params, rows, config.n_layers))


def test_one_category_column_means_the_same_as_a_padded_one() -> None:
    torch.manual_seed(0)
    table = torch.randn(10, 4, requires_grad=True)
    cats = torch.tensor([[3], [-1], [9], [0]])
    padded = torch.cat([cats, torch.full_like(cats, -1)], dim=1)  # the general path, with -1 padding
    one, general = _category_means(table, cats), _category_means(table, padded)
    torch.testing.assert_close(one, general)
    assert one[1].abs().sum() == 0  # no category: zeros
    (grad_one,) = torch.autograd.grad(one.sum(), table)
    (grad_general,) = torch.autograd.grad(general.sum(), table)
    torch.testing.assert_close(grad_one, grad_general)


def random_examples(n: int, config: ModelConfig, width: int, categories: int, seed: int) -> Examples:
    """Rows with several of the first ``categories`` categories per item and
    padded histories: every averaging path is used."""
    g = torch.Generator().manual_seed(seed)
    L = config.history_length

    def ids(high: int, *shape: int) -> torch.Tensor:
        values = torch.randint(0, high, shape, generator=g, dtype=torch.int32)
        return torch.where(torch.rand(shape, generator=g) < 0.3, -1, values)

    return Examples(
        user=torch.randint(0, config.user_buckets, (n,), generator=g, dtype=torch.int32),
        item=torch.randint(0, config.item_buckets, (n,), generator=g, dtype=torch.int32),
        item_cats=ids(categories, n, width),
        hist_items=ids(config.item_buckets, n, L),
        hist_cats=ids(categories, n, L, width),
        label=torch.zeros(n),
    )


def test_small_tables_average_as_the_full_tables_do(small_config: ModelConfig) -> None:
    """Full tables average by gathers; compact ones (the meta generator's) by a
    dense weights matrix. Both give the same scores and the same gradients."""
    config = replace(small_config, category_buckets=4 * DENSE_MEAN_MAX_ROWS)
    full = {k: v.requires_grad_() for k, v in EmbMLP(config).params().items()}
    batch = random_examples(40, config, width=3, categories=DENSE_MEAN_MAX_ROWS, seed=5)
    rows, (compact,) = compact_batches([batch])
    assert len(rows["cat_emb"]) <= DENSE_MEAN_MAX_ROWS < config.category_buckets
    small = {k: (v[rows[k]] if k in rows else v).detach().requires_grad_() for k, v in full.items()}
    full_scores, small_scores = logits(full, batch, 3), logits(small, compact, 3)
    torch.testing.assert_close(small_scores, full_scores)
    weights = torch.randn(len(batch))
    full_grads = dict(zip(full, torch.autograd.grad((full_scores * weights).sum(), list(full.values())), strict=True))
    small_grads = torch.autograd.grad((small_scores * weights).sum(), list(small.values()))
    for name, grad in zip(small, small_grads, strict=True):
        torch.testing.assert_close(grad, full_grads[name][rows[name]] if name in rows else full_grads[name])


def catalogue_examples(n: int, config: ModelConfig, width: int, seed: int) -> Examples:
    """:func:`random_examples` whose histories name 12 items, each with the same
    categories in every slot, except a few slots that name others (as a hashed
    row standing for two items does)."""
    batch = random_examples(n, config, width=width, categories=config.category_buckets, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    catalogue = torch.randint(-1, config.category_buckets, (12, width), generator=g, dtype=torch.int32)
    items = torch.where(batch.hist_items >= 0, batch.hist_items % 12, -1)
    cats = torch.where(items.unsqueeze(-1) >= 0, catalogue[items.clamp(min=0)], -1)
    cats.view(-1, width)[items.reshape(-1).nonzero()[::9, 0]] = torch.arange(width, dtype=torch.int32)  # odd slots
    return replace(batch, hist_items=items, hist_cats=cats)


@pytest.mark.parametrize("catalogue", [False, True])
def test_category_weights_score_as_the_category_fields_do(small_config: ModelConfig, catalogue: bool) -> None:
    """The meta generator's per-period category weights stand in for the
    examples' category fields: same scores, same gradients, whether the
    histories' items name the same categories in each slot or not."""
    full = {k: v.requires_grad_() for k, v in EmbMLP(small_config).params().items()}
    if catalogue:
        batch = catalogue_examples(40, small_config, width=3, seed=7)
    else:
        batch = random_examples(40, small_config, width=3, categories=small_config.category_buckets, seed=7)
    mix = category_mix(batch, small_config.category_buckets)
    assert mix is not None and 0 < len(mix.rows) <= small_config.category_buckets
    named = torch.cat([batch.item_cats.flatten(), batch.hist_cats[batch.hist_items >= 0].flatten()])
    assert torch.equal(mix.rows, torch.unique(named)[1:])
    cats = full["cat_emb"][mix.rows].detach().requires_grad_()
    blind = replace(batch, item_cats=batch.item_cats[:, :0], hist_cats=batch.hist_cats[..., :0])
    weights = torch.randn(len(batch))
    expected = logits(full, batch, 3)
    got = logits({**full, "cat_emb": cats}, blind, 3, mix)
    torch.testing.assert_close(got, expected)
    (full_grad, item_grad), (cat_grad, mix_item_grad) = (
        torch.autograd.grad((scores * weights).sum(), [table, full["item_emb"]])
        for scores, table in ((expected, full["cat_emb"]), (got, cats))
    )
    torch.testing.assert_close(cat_grad, full_grad[mix.rows])
    torch.testing.assert_close(mix_item_grad, item_grad)
    # a batch of the rows scores as the whole set's rows do
    some = torch.tensor([3, 17, 5])
    torch.testing.assert_close(
        logits({**full, "cat_emb": cats}, blind.select(some), 3, mix.select(some)), expected[some]
    )
    assert category_mix(batch, small_config.category_buckets, max_rows=len(mix.rows) - 1) is None
    empty = category_mix(batch.select(torch.arange(0)), small_config.category_buckets)
    assert empty is not None and empty.item.shape == empty.history.shape == (0, 0)
    # examples naming no category at all: no columns, and scores as the category fields give them
    none = replace(
        batch, item_cats=torch.full_like(batch.item_cats, -1), hist_cats=torch.full_like(batch.hist_cats, -1)
    )
    bare = category_mix(none, small_config.category_buckets)
    assert bare is not None and bare.item.shape == bare.history.shape == (len(batch), 0)
    torch.testing.assert_close(
        logits({**full, "cat_emb": full["cat_emb"][:0]}, blind, 3, bare).detach(), logits(full, none, 3).detach()
    )


@pytest.mark.parametrize("kind, with_mix", [("emb-mlp", False), ("emb-mlp", True), ("mf", False)])
def test_parts_score_under_their_own_stacked_parameters(
    small_config: ModelConfig, kind: ModelKind, with_mix: bool
) -> None:
    """The meta generator scores each window step's batch under that step's
    parameters in one pass: tables stacked step after step, each batch's
    indices pointing at its own step's copy. Same scores and gradients as
    scoring every batch on its own."""
    config = replace(small_config, kind=kind)
    n_layers = config.n_layers
    base = EmbMLP(config).params()
    steps = [0, 2]  # a window of 3 steps, the middle one unscored
    params = [{k: v + 0.1 * torch.randn_like(v) for k, v in base.items()} for _ in range(3)]
    batches = [random_examples(n, config, width=2, categories=config.category_buckets, seed=n) for n in (13, 21)]
    mixes = [category_mix(b, config.category_buckets) for b in batches] if with_mix else None
    if mixes is not None:
        batches = [replace(b, item_cats=b.item_cats[:, :0], hist_cats=b.hist_cats[..., :0]) for b in batches]
    looked_up = [t for t in ("user_emb", "item_emb", "cat_emb") if t in base and not (with_mix and t == "cat_emb")]
    rows, alone = compact_batches(batches, looked_up)
    _, stacked_batches = compact_batches(batches, looked_up, steps)
    leaves = [{k: v.clone().requires_grad_() for k, v in p.items()} for p in params]
    tables = {t: torch.cat([p[t][rows[t]] for p in leaves]) for t in looked_up}
    if mixes is not None:
        tables["cat_emb"] = torch.cat([leaves[j]["cat_emb"][m.rows] for j, m in zip(steps, mixes, strict=True)])  # type: ignore[union-attr]
    heads = {k: torch.stack([leaves[j][k] for j in steps]) for k in leaves[0] if k not in tables}
    together = parts_logits(
        tables,
        heads,
        concat_examples(stacked_batches),
        [len(b) for b in batches],
        n_layers,
        mixes,  # type: ignore[arg-type]
    )
    separate = []
    for j, ex, mix in zip(steps, alone, mixes or [None] * len(steps), strict=True):
        own = {**leaves[j], **{t: leaves[j][t][rows[t]] for t in looked_up}}
        if mix is not None:
            own["cat_emb"] = leaves[j]["cat_emb"][mix.rows]
        separate.append(logits(own, ex, n_layers, mix))
    expected = torch.cat(separate)
    torch.testing.assert_close(together, expected)
    weights = torch.randn(len(expected))
    flat = [v for p in leaves for v in p.values()]
    got = torch.autograd.grad((together * weights).sum(), flat, allow_unused=True)
    want = torch.autograd.grad((expected * weights).sum(), flat, allow_unused=True)
    for leaf, a, b in zip(flat, got, want, strict=True):
        # the unscored step's tables join the stack: a zero gradient where alone there is none
        torch.testing.assert_close(
            a if a is not None else torch.zeros_like(leaf), b if b is not None else torch.zeros_like(leaf)
        )
