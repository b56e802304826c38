"""The model's wiring against the reference facts: token ids, block lengths, conditioning path, guidance."""
import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.diffusion import ImageRequest, denoise_group
from dreamgen.generation.lm import Run
from dreamgen.generation.runner import ModelRunner
from dreamgen.model.special_tokens import RELEASED_IDS, SpecialTokens
from tests.helpers import request, tiny_generator, tiny_model


def full_forward(model, embeds):
    """One uncached forward over a whole sequence: post-norm hidden states (1, T, H)."""
    n = embeds.shape[0]
    out = model.llm.model(inputs_embeds=embeds[None], attention_mask=torch.ones(1, n, dtype=torch.long),
                          position_ids=torch.arange(n)[None])
    return out.last_hidden_state


def test_tokenizer_has_the_released_special_ids():
    tok = tiny_model().tokenizer
    for token, expected in RELEASED_IDS.items():
        assert tok.convert_tokens_to_ids(token) == expected
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert len(tok) == 32008


def test_block_lengths_follow_the_reference():
    released = SpecialTokens.from_ids(RELEASED_IDS, bos=1, eos=2, num_dream_queries=64, num_image_patches=256)
    assert released.dream_block_len == 66 and released.image_block_len == 258 and released.image_cost == 324
    assert released.dream_block()[0] == 32003 and released.dream_block()[-1] == 32002
    assert set(released.dream_block()[1:-1]) == {32004}
    assert released.image_block()[0] == 32001 and released.image_block()[-1] == 32005
    tiny = tiny_model().special
    assert len(tiny.dream_block()) == tiny.num_dream_queries + 2
    assert len(tiny.image_block()) == tiny.num_image_patches + 2


def test_the_dream_block_puts_the_queries_between_start_and_end():
    gen = tiny_generator()
    model = gen.model
    block = gen.encoder.dream_block()
    q = model.special.num_dream_queries
    assert block.shape == (q + 2, model.hidden_size)
    assert torch.equal(block[1:-1], model.dream.dream_queries[0])
    assert torch.equal(block[0], model.embed_tokens(torch.tensor(model.special.dream_start)))


def test_conditioning_shape_is_batch_queries_cross_dim():
    model = tiny_model()
    states = torch.randn(3, model.special.num_dream_queries, model.hidden_size)
    cond = model.condition(states)
    assert cond.shape == (3, model.special.num_dream_queries, model.head.unet.config.cross_attention_dim)


def _query_states(model, gen, prefix_ids, suffix_ids=()):
    embeds = torch.cat([gen._embed(prefix_ids), gen.encoder.dream_block()]
                       + ([gen._embed(list(suffix_ids))] if suffix_ids else []))
    hidden = full_forward(model, embeds)[0]
    start = len(prefix_ids) + 1
    return hidden[start:start + model.special.num_dream_queries]


def test_causality_text_after_dream_start_does_not_change_the_condition():
    gen = tiny_generator()
    model = gen.model
    prefix = [1] + gen._tokens("a red circle on a blue background")
    with torch.no_grad():
        alone = _query_states(model, gen, prefix)
        followed = _query_states(model, gen, prefix, gen._tokens(" and more words after the picture"))
        other_prefix = _query_states(model, gen, [1] + gen._tokens("a green square on a white background"))
    torch.testing.assert_close(alone, followed, rtol=0, atol=1e-5)
    assert (alone - other_prefix).abs().max() > 1e-3  # text before it does change it


def test_cache_equivalence_prefix_on_cache_plus_queries_equals_one_forward():
    """The dream block fed on the prefix's keys and values in the paged pool, as the generator feeds it, sees what
    one uncached forward over prefix + block sees: the condition read from a cache is the reference's."""
    gen = tiny_generator()
    model = gen.model
    prefix = gen._embed([1] + gen._tokens("how to build a bird house"))
    dream = gen.encoder.dream_block()
    n, m = prefix.shape[0], dream.shape[0]
    for attention in ("sdpa", "flex"):
        runner = ModelRunner(model, model.max_positions, GeneratorConfig(attention=attention))
        runner.open(0, n + m)
        with torch.no_grad():
            runner.forward(prefix, [Run(0, 0, n)], [])
            hidden, logits = runner.forward(dream, [Run(0, n, m)], [0])
            whole = full_forward(model, torch.cat([prefix, dream]))
            alone = full_forward(model, dream)
        assert runner.kv_stats.live_tokens == n + m  # the block went on top of the prefix's cache
        torch.testing.assert_close(hidden, whole[0, n:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[0], model.llm.lm_head(whole[0, -1]).float(), rtol=1e-5, atol=1e-5)
        assert (hidden - alone[0]).abs().max() > 1e-2  # without the prefix the states differ: the test can tell


def test_unconditional_embedding_is_prompt_independent_and_cached():
    gen = tiny_generator()
    first = gen.unconditional()
    gen.generate([request(max_new_tokens=5, max_images=0)])
    assert gen.unconditional() is first  # cached, not recomputed per prompt
    fresh = tiny_generator().unconditional()
    torch.testing.assert_close(first, fresh)
    # it is the queries after <s> alone
    with torch.no_grad():
        expected = tiny_model().condition(_query_states(tiny_model(), gen, [1]))
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(gen.unconditional("blurry, dark"), first)


def test_guidance_batches_uncond_then_cond_and_mixes_as_the_reference():
    model = tiny_model()
    q, c = model.special.num_dream_queries, model.head.unet.config.cross_attention_dim
    cond, uncond = torch.randn(q, c), torch.randn(q, c)
    seen = []

    def recording_unet(sample, t, hidden):
        seen.append(hidden.clone())
        return model.head.unet(sample, t, encoder_hidden_states=hidden, return_dict=False)[0]

    job = ImageRequest(cond=cond, uncond=uncond, seed=3, steps=2, guidance=4.0, scheduler="ddim", height=64, width=64)
    gen = tiny_generator()
    with torch.no_grad():
        guided = denoise_group([job], recording_unet, gen.components.vae_decode, model.head.scheduler_config, 4, 8,
                               "cpu", torch.float32)
    assert seen[0].shape == (2, q, c)
    torch.testing.assert_close(seen[0][0], uncond)
    torch.testing.assert_close(seen[0][1], cond)
    # guidance <= 1 runs the condition alone, as diffusers does
    seen.clear()
    job.guidance = 1.0
    with torch.no_grad():
        plain = denoise_group([job], recording_unet, gen.components.vae_decode, model.head.scheduler_config, 4, 8,
                              "cpu", torch.float32)
    assert seen[0].shape == (1, q, c)
    assert guided.shape == plain.shape == (1, 3, 64, 64)
    assert (guided - plain).abs().max() > 1e-4
