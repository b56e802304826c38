"""The batched sampler: right distribution, nucleus and bans respected, rows independent of their neighbours."""
import torch

from dreamgen.generation.sampling import sample_token, sample_tokens
from dreamgen.params import GenerationParams


def _draws(logits, params, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.tensor([sample_token(logits, params, g) for _ in range(n)])


def test_greedy_is_argmax():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    rows = [GenerationParams(temperature=0)] * 3
    assert sample_tokens(logits, rows, [torch.Generator()] * 3) == logits.argmax(-1).tolist()


def test_frequencies_follow_the_tempered_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, float("-inf")])
    params = GenerationParams(temperature=0.7)
    counts = torch.bincount(_draws(logits, params, 20000), minlength=5).double()
    expected = torch.softmax(logits / 0.7, -1).double() * 20000
    assert counts[4] == 0  # a banned token is never drawn
    assert torch.all((counts[:4] - expected[:4]).abs() < 4 * expected[:4].sqrt() + 5), (counts, expected)


def test_nucleus_keeps_only_the_head():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    drawn = set(_draws(logits, GenerationParams(temperature=1.0, top_p=0.75), 3000).tolist())
    assert drawn == {0, 1}  # 0.5 + 0.3 reaches 0.75; 0.15 and 0.05 are cut
    assert set(_draws(logits, GenerationParams(temperature=1.0, top_p=0.1), 500).tolist()) == {0}


def test_a_row_draws_the_same_token_whatever_its_neighbours():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 1000, generator=g)
    params = [GenerationParams(temperature=1.0), GenerationParams(temperature=0.5, top_p=0.9),
              GenerationParams(temperature=0), GenerationParams(temperature=1.3)]
    alone = [sample_token(logits[i], params[i], torch.Generator().manual_seed(10 + i)) for i in range(4)]
    batch = sample_tokens(logits, params, [torch.Generator().manual_seed(10 + i) for i in range(4)])
    reversed_batch = sample_tokens(logits.flip(0), params[::-1], [torch.Generator().manual_seed(13 - i) for i in range(4)])
    assert batch == alone == reversed_batch[::-1]


def test_same_generator_state_same_token_other_seed_other_stream():
    logits = torch.zeros(1000)  # uniform: any difference in the stream shows
    params = GenerationParams(temperature=1.0)
    assert _draws(logits, params, 20, seed=5).tolist() == _draws(logits, params, 20, seed=5).tolist()
    assert _draws(logits, params, 20, seed=5).tolist() != _draws(logits, params, 20, seed=6).tolist()
