"""The interleaved loop: lockstep batches, stopping rules, input images, reproducibility, cancellation."""
import dataclasses

import pytest
import torch
from PIL import Image

from dreamgen.errors import GenerationCancelled, ParamsError
from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.params import DREAMGEN_DEFAULTS, GenerationParams
from tests.helpers import max_pixel_diff, request, tiny_generator, tiny_model

MIXED = [  # documents that differ in everything that may differ inside one batch
    request("how to grow tomatoes", seed=1, temperature=0.0, max_images=2, max_new_tokens=60),
    request("the history of trains", seed=2, temperature=1.0, top_p=0.9, max_images=3, max_new_tokens=80),
    request("a story about the moon", seed=3, temperature=0.7, max_images=1, steps=2, guidance=2.0, scheduler="ddim"),
    request("bake bread", seed=4, temperature=0.0, max_images=2, image_size=32, negative_prompt="dark"),
    request("swim in the sea", seed=5, temperature=1.2, max_images=2, max_new_tokens=100),
]


def structure(doc):
    return [(b.type, b.text if b.type == "text" else (b.width, b.height, b.seed)) for b in doc.blocks]


def assert_same_document(a, b, pixel_tolerance=1):
    assert structure(a) == structure(b)
    assert a.stop_reason == b.stop_reason
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images):
        assert max_pixel_diff(x.image, y.image) <= pixel_tolerance


def test_the_mixed_batch_exercises_pictures_and_both_stopping_rules():
    docs = tiny_generator().generate(MIXED)
    assert len(docs) == len(MIXED) and sum(len(d.images) for d in docs) >= 4
    assert all(len(d.images) <= r.params.max_images for d, r in zip(docs, MIXED))
    assert all(d.timings["new_tokens"] <= r.params.max_new_tokens for d, r in zip(docs, MIXED))
    assert {d.stop_reason for d in docs} <= {"eos", "max_new_tokens"}
    assert any(b.type == "text" for d in docs for b in d.blocks)


def test_batched_equals_unbatched_per_document():
    gen = tiny_generator()
    together = gen.generate(MIXED)
    assert len(together) == len(MIXED)
    for req, doc in zip(MIXED, together):
        alone = gen.generate([req])[0]
        # Tokens are identical; pixels may differ by one level of 255 (float rounding differs with batch size).
        assert_same_document(alone, doc)


def test_order_in_the_batch_does_not_matter():
    gen = tiny_generator()
    forward = gen.generate(MIXED)
    backward = gen.generate(MIXED[::-1])[::-1]
    assert len(forward) == len(backward) == len(MIXED)
    for a, b in zip(forward, backward):
        assert_same_document(a, b)


def test_same_seed_same_document_other_seed_other_document():
    gen = tiny_generator()
    req = request("a guide to painting a room", seed=7, temperature=1.0, max_new_tokens=50)
    a, b = gen.generate([req])[0], gen.generate([req])[0]
    assert structure(a) == structure(b) and len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images):
        assert max_pixel_diff(x.image, y.image) == 0
    c = gen.generate([DocumentRequest(req.prompt, req.params.replace(seed=8))])[0]
    assert structure(c) != structure(a)


def test_max_images_zero_means_text_only_and_max_new_tokens_stops():
    docs = tiny_generator().generate([request(topic, max_images=0, max_new_tokens=5)
                                      for topic in ("trains", "the sea", "bread", "gold and silver")])
    assert all(not d.images for d in docs)
    assert all(d.timings["new_tokens"] <= 5 for d in docs)
    assert any(d.stop_reason == "max_new_tokens" and d.timings["new_tokens"] == 5 for d in docs)


def test_context_full_stops_a_document(monkeypatch):
    gen = tiny_generator()
    monkeypatch.setattr(gen.model.llm.config, "max_position_embeddings", 90)
    doc = gen.generate([request(max_new_tokens=500, max_images=0)])[0]
    assert doc.stop_reason in ("context_full", "eos")
    assert doc.timings["new_tokens"] < 90


def test_input_images_enter_the_context():
    gen = tiny_generator()
    red = Image.new("RGB", (48, 40), (220, 30, 30))
    blue = Image.new("RGB", (48, 40), (30, 30, 220))
    base = GenerationParams(seed=1, max_new_tokens=30, max_images=0)
    without = gen.generate([DocumentRequest("describe the picture", base)])[0]
    with_red = gen.generate([DocumentRequest("describe the picture", base, images=[red])])[0]
    with_blue = gen.generate([DocumentRequest("describe the picture", base, images=[blue])])[0]
    placed = gen.generate([DocumentRequest("compare <image> with <image> please", base, images=[red, blue])])[0]
    assert len({without.text, with_red.text, with_blue.text, placed.text}) == 4
    # the image block (P + 2 positions) stands where the placeholder was
    req = DocumentRequest("look: <image> now", base, images=[red])
    before, after = gen.render_instruction(req).split("<image>")
    expected = 1 + len(gen._tokens(before)) + gen.special.image_block_len + len(gen._tokens(after))
    embeds = gen.encode_prompt(req)
    assert embeds.shape[0] == expected
    start = 1 + len(gen._tokens(before))
    assert torch.equal(embeds[start], gen._embed([gen.special.im_start])[0])
    assert torch.equal(embeds[start + gen.special.image_block_len - 1], gen._embed([gen.special.im_end])[0])


def test_placeholder_count_must_match_images():
    gen = tiny_generator()
    with pytest.raises(ParamsError, match=r"2 <image> placeholder\(s\) but 1 input image"):
        gen.generate([DocumentRequest("<image> and <image>", images=[Image.new("RGB", (8, 8))])])


def test_a_prompt_cannot_smuggle_control_tokens():
    gen = tiny_generator()
    ids = gen._tokens("<dream_start><im_patch></s>")
    assert not set(ids) & {gen.special.dream_start, gen.special.im_patch, gen.special.eos}


def test_image_only_mode_paints_one_picture_from_a_caption():
    doc = tiny_generator().generate([DocumentRequest("a blue square", GenerationParams(steps=2), image_only=True)])[0]
    assert [b.type for b in doc.blocks] == ["image"]
    assert doc.images[0].image.size == (64, 64)


def test_image_size_must_be_a_multiple_of_the_vae_factor():
    with pytest.raises(ParamsError, match="image_size=36 is not a multiple of the VAE factor 8"):
        tiny_generator().generate([request(image_size=36)])


def test_cancel_stops_between_steps():
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(GenerationCancelled):
        tiny_generator().generate(MIXED[:2], should_stop=stop)


def test_progress_reports_every_image_and_document():
    events = []
    docs = tiny_generator().generate(MIXED, on_progress=lambda kind, i: events.append((kind, i)))
    assert sorted(i for kind, i in events if kind == "document") == list(range(len(MIXED)))
    assert sum(kind == "image" for kind, _ in events) == sum(len(d.images) for d in docs)


def test_document_serialises_to_json():
    import json
    doc = tiny_generator().generate([MIXED[0]])[0]
    data = json.loads(json.dumps(doc.to_dict()))
    assert data["model"] == tiny_model().info.name and data["params"]["seed"] == 1
    assert [b["type"] for b in data["blocks"]] == [b.type for b in doc.blocks]


def test_pictures_of_different_sizes_in_one_step():
    gen = tiny_generator()
    requests = [DocumentRequest("a red circle", GenerationParams(seed=1, steps=2, image_size=size), image_only=True)
                for size in (64, 32, 64, 48)]
    docs = gen.generate(requests)
    assert [d.images[0].image.size for d in docs] == [(64, 64), (32, 32), (64, 64), (48, 48)]
    alone = gen.generate([requests[1]])[0]
    assert max_pixel_diff(alone.images[0].image, docs[1].images[0].image) <= 1
    # and they are read back in one batch per size, as each would be alone
    pictures = [torch.rand(3, s, s) for s in (64, 32, 64)]
    together = gen.read_images(pictures)
    assert len(together) == len(pictures)
    for picture, features in zip(pictures, together):
        torch.testing.assert_close(features, gen.components.encode_images(picture[None])[0], rtol=1e-4, atol=1e-5)


def test_pictures_asked_together_share_each_unet_step():
    # stepwise: which pictures share a UNet call is then decided by the generator's steps, not by the painter
    # thread's timing (overlap)
    gen = Generator(tiny_model(), config=GeneratorConfig(painting="stepwise"))
    batches = []
    unet = gen.components.unet

    def counting_unet(sample, timestep, encoder_hidden_states):
        batches.append(sample.shape[0])
        return unet(sample, timestep, encoder_hidden_states)

    gen.components.unet = counting_unet
    captions = ["a red circle", "a blue square", "a green cross"]
    docs = gen.generate([DocumentRequest(c, GenerationParams(seed=i, steps=3), image_only=True)
                         for i, c in enumerate(captions)])
    assert batches == [2 * 3] * 3  # one guided batch [uncond x3, cond x3] per step, not one call per picture
    alone = tiny_generator().generate([DocumentRequest(captions[1], GenerationParams(seed=1, steps=3), image_only=True)])
    assert max_pixel_diff(alone[0].images[0].image, docs[1].images[0].image) <= 1

    # documents that ask for pictures at different steps wait for each other (up to a limit), so the lockstep
    # batch makes fewer UNet calls than one call per picture and step
    batches.clear()
    mixed = gen.generate([request(f"topic {i}", seed=i, temperature=1.0, steps=2, max_images=2, max_new_tokens=60)
                          for i in range(6)])
    pictures = sum(len(d.images) for d in mixed)
    assert pictures >= 4 and max(batches) > 2
    assert len(batches) < pictures * 2


def test_unset_params_are_the_models_own_and_the_document_names_them():
    gen = tiny_generator()
    req = request("a guide to painting a room", seed=7, max_images=1, max_new_tokens=50, steps=3)
    assert req.params.guidance is None and req.params.temperature is None
    assert gen.model.info.defaults == DREAMGEN_DEFAULTS  # a model built here: dreamgen's, unless a checkpoint says
    saved = gen.model.info
    # as a checkpoint naming these would load; steps and max_new_tokens stay the request's
    gen.model.info = dataclasses.replace(saved, defaults=dataclasses.replace(
        DREAMGEN_DEFAULTS, guidance=2.0, scheduler="ddim", temperature=0.7, top_p=0.9, steps=99, max_new_tokens=99))
    try:
        own = gen.generate([req])[0]
        explicit = gen.generate([DocumentRequest(req.prompt, req.params.replace(
            guidance=2.0, scheduler="ddim", temperature=0.7, top_p=0.9))])[0]
        other = gen.generate([DocumentRequest(req.prompt, req.params.replace(guidance=7.5))])[0]
    finally:
        gen.model.info = saved  # tiny_model() is shared
    assert own.images, "the tiny model should paint here"
    assert len(own.images) == len(explicit.images) == len(other.images)
    assert own.params == explicit.params
    assert (own.params["guidance"], own.params["scheduler"], own.params["temperature"], own.params["top_p"],
            own.params["steps"], own.params["max_new_tokens"]) == (2.0, "ddim", 0.7, 0.9, 3, 50)
    assert other.params["guidance"] == 7.5
    assert own.text == explicit.text
    for x, y, z in zip(own.images, explicit.images, other.images):
        assert max_pixel_diff(x.image, y.image) == 0
        assert max_pixel_diff(x.image, z.image) > 0  # the scale reached the UNet: another one paints otherwise


def test_a_request_naming_nothing_takes_the_models_defaults():
    gen = tiny_generator()
    doc = gen.generate([DocumentRequest("a note on tea", GenerationParams(seed=1, max_images=0))])[0]
    assert {k: doc.params[k] for k in DREAMGEN_DEFAULTS.to_dict()} == DREAMGEN_DEFAULTS.to_dict()
