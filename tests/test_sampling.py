"""The device sampler: right distribution, nucleus and bans respected, rows independent of their neighbours,
draws keyed by (seed, position) only, and nothing but the tokens leaves the device."""
import torch

from dreamgen.generation.sampling import SamplingRows, row_key, sample, sample_one, uniforms


def _rows(temperatures, top_ps, keys):
    return SamplingRows.build(temperatures, top_ps, keys, torch.device("cpu"))


def _draws(logits, temperature, top_p, n, seed=0):
    """n draws of one document at n successive positions, in one batch."""
    rows = _rows([temperature] * n, [top_p] * n, [row_key(seed, p) for p in range(n)])
    return sample(logits.expand(n, -1).float(), rows)


def test_greedy_is_argmax():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    assert sample(logits, _rows([0, 0, 0], [1, 1, 1], [1, 2, 3])).tolist() == logits.argmax(-1).tolist()


def test_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    counts = torch.bincount(_draws(logits, 0.7, 1.0, 20000), minlength=5).double()
    expected = torch.softmax(logits / 0.7, -1).double() * 20000
    assert counts.sum() == 20000 and counts[4] == 0  # a banned token is never drawn
    assert torch.all((counts[:4] - expected[:4]).abs() < 4 * expected[:4].sqrt() + 5), (counts, expected)


def test_uniforms_are_uniform_and_independent_of_the_row_beside():
    u = uniforms(torch.tensor([row_key(1, p) for p in range(64)]), 4096)
    assert u.shape == (64, 4096) and 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    deciles = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert torch.all((deciles - 0.1).abs() < 0.005)
    # neighbouring positions and seeds are not correlated
    corr = torch.corrcoef(torch.stack([u[0], u[1], uniforms(torch.tensor([row_key(2, 0)]), 4096)[0]]))
    assert corr[0, 1].abs() < 0.05 and corr[0, 2].abs() < 0.05


def test_nucleus_keeps_only_the_head():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    drawn = set(_draws(logits, 1.0, 0.75, 3000).tolist())
    assert drawn == {0, 1}  # 0.5 + 0.3 reaches 0.75; 0.15 and 0.05 are cut
    assert set(_draws(logits, 1.0, 0.1, 500).tolist()) == {0}
    assert set(_draws(logits, 1.0, 1.0, 3000).tolist()) == {0, 1, 2, 3}


def test_a_row_draws_the_same_token_whatever_its_neighbours():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 1000, generator=g)
    temperatures, top_ps = [1.0, 0.5, 0.0, 1.3], [1.0, 0.9, 1.0, 0.8]
    keys = [row_key(10 + i, 7) for i in range(4)]
    alone = [sample(logits[i:i + 1], _rows(temperatures[i:i + 1], top_ps[i:i + 1], keys[i:i + 1])).item()
             for i in range(4)]
    batch = sample(logits, _rows(temperatures, top_ps, keys)).tolist()
    flipped = sample(logits.flip(0), _rows(temperatures[::-1], top_ps[::-1], keys[::-1])).tolist()
    assert len(batch) == 4 and batch == alone == flipped[::-1]
    assert sample_one(logits[1], 0.5, 0.9, 11, 7) == batch[1]  # the naive baseline's one-row draw


def test_seed_and_position_decide_the_draw():
    logits = torch.zeros(1000)  # uniform: any difference in the stream shows
    assert _draws(logits, 1.0, 1.0, 20, seed=5).tolist() == _draws(logits, 1.0, 1.0, 20, seed=5).tolist()
    assert _draws(logits, 1.0, 1.0, 20, seed=5).tolist() != _draws(logits, 1.0, 1.0, 20, seed=6).tolist()
    assert len(set(_draws(logits, 1.0, 1.0, 20, seed=5).tolist())) > 15  # positions draw apart


def test_the_dream_bias_forbids_a_picture_per_row():
    logits = torch.zeros(2, 10)
    logits[:, 3] = 50.0  # token 3 would always win
    rows = SamplingRows.build([1.0, 1.0], [1.0, 1.0], [1, 2], torch.device("cpu"), dream_allowed=[True, False])
    logits[:, 3].add_(rows.dream_bias)
    tokens = sample(logits, rows).tolist()
    assert tokens[0] == 3 and tokens[1] != 3


def test_sampling_compiles_without_a_graph_break():
    """No host sync inside: the whole draw is one graph."""
    rows = _rows([1.0, 0.0, 0.7], [0.9, 1.0, 1.0], [1, 2, 3])
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(0))
    explanation = torch._dynamo.explain(sample)(logits, rows)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0
