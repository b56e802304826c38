"""Documents and pictures per minute: dreamgen at its default settings vs the naive way, in one run, on the same
model and prompts.

The naive way is what the reference scripts do: one prompt at a time, `LlamaForCausalLM.generate` until
`<dream_start>` or `</s>`, then a separate diffusers `StableDiffusionPipeline` call per image at DDPM 50 steps
(the reference's scheduler at dreamgen's step count), the context re-encoded from scratch after each picture. It
samples through a logits processor that draws from the document's own generator exactly as dreamgen does
(temperature 1, so random models still place pictures).

dreamgen's side is `Generator(model)` as `dreamgen run` builds it: the slot pool, painting as configured
(DREAMGEN_PAINTING), and the parameters a request leaves unset taken from dreamgen's own model's defaults
(`--ours default`: the shipped `shapes` model's), some of them changed (`--ours guidance_until=0.75`), or given
(`--ours 50` paints DDPM 50 without the cache: the same pictures as the naive way). Where the two paint with
different settings their documents differ after the first picture (the text reads it back), so both
documents/minute and pictures/minute are printed, and the pictures each side painted.

    python bench/generation.py [--config tiny|small|shapes] [--docs 8] [--ours default|50] [--threads 1] [--onnx]
    python bench/generation.py --config shapes --against gather50   # issue 32: against DDPM 50 painted by gather

--against gather50 replaces the naive way by dreamgen as it was before issue 32 (DDPM 50, no cache, pictures
gathered while the text waits).
--onnx adds a column: dreamgen's side on the ONNX Runtime backend (graphs exported to a temporary engine cache
first, not timed), as `dreamgen run --backend onnx` runs it.

"pictures" is the share of the naive way's time spent inside the diffusers pipeline.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from diffusers import StableDiffusionPipeline
from transformers import LogitsProcessor, LogitsProcessorList

from dreamgen.generation.diffusion import image_seed, make_scheduler
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.generation.images import pil_to_tensor
from dreamgen.generation.sampling import sample_one
from dreamgen.model.tiny import SMALL_SIZES, build_tiny_model
from dreamgen.params import GenerationParams, ModelDefaults

TOPICS = ["how to build a bird house", "the history of the river", "a story about the moon", "growing tomatoes",
          "learning to swim", "a guide to painting a room", "travel by train", "baking bread at home"]


class SampleAsDreamgen(LogitsProcessor):
    """Draws the next token with dreamgen's sampler (keyed by the document's seed and the position it samples
    at), then leaves only that token, so HF generate (greedy over the result) walks the engine's path."""

    def __init__(self, params, context_length, banned):
        self.params, self.context_length, self.banned = params, context_length, banned

    def __call__(self, input_ids, scores):
        logits = scores[0].clone().float()
        logits[self.banned] = float("-inf")
        position = self.context_length + input_ids.shape[1]  # generate's input_ids are the new tokens only
        token = sample_one(logits, self.params.temperature, self.params.top_p, self.params.seed, position)
        only = torch.full_like(scores, float("-inf"))
        only[0, token] = 0.0
        return only


def naive_document(gen: Generator, pipe: StableDiffusionPipeline, req: DocumentRequest):
    """One document the reference scripts' way; returns (text, number of images, seconds spent in the pipeline)."""
    model, s = gen.model, gen.special
    p = req.params.resolved(model.info.defaults)  # as the generator resolves them
    device = model.device
    context = gen.encode_prompt(req)  # (T, H)
    text_ids, images, new_tokens, pipeline_s = [], 0, 0, 0.0
    size = p.image_size or model.head.default_image_size
    while new_tokens < p.max_new_tokens:
        allow_dream = images < p.max_images and context.shape[0] + 1 + s.image_cost + 1 <= model.max_positions
        banned = gen.encoder.banned.tolist() + ([] if allow_dream else [s.dream_start])
        sampler = LogitsProcessorList([SampleAsDreamgen(p, context.shape[0], banned)])
        out = model.llm.generate(inputs_embeds=context[None], attention_mask=torch.ones(1, context.shape[0], dtype=torch.long, device=device),
                                 max_new_tokens=p.max_new_tokens - new_tokens, do_sample=False, logits_processor=sampler,
                                 eos_token_id=[s.eos, s.dream_start], pad_token_id=s.pad)
        new = out[0].tolist()
        new_tokens += len(new)
        if not new or new[-1] != s.dream_start:
            text_ids += [t for t in new if t != s.eos]
            break
        text_ids += new[:-1]
        # the condition: a full forward over context + new tokens + dream block (no cache kept between calls)
        context = torch.cat([context, gen._embed(new[:-1])]) if len(new) > 1 else context
        dream = gen.encoder.dream_block()
        full = torch.cat([context, dream])
        n, q = full.shape[0], s.num_dream_queries
        hidden = model.llm.model(inputs_embeds=full[None], attention_mask=torch.ones(1, n, dtype=torch.long, device=device),
                                 position_ids=torch.arange(n, device=device)[None]).last_hidden_state
        cond = model.condition(hidden[:, n - 1 - q:n - 1])
        pipe.scheduler = make_scheduler(p.scheduler, model.head.scheduler_config)
        start = time.perf_counter()
        image = pipe(prompt_embeds=cond, negative_prompt_embeds=gen.unconditional(p.negative_prompt)[None],
                     num_inference_steps=p.steps, guidance_scale=p.guidance, height=size, width=size,
                     generator=torch.Generator("cpu").manual_seed(image_seed(p.seed, images)), output_type="pil").images[0]
        pipeline_s += time.perf_counter() - start
        images += 1
        feats = model.encode_images(pil_to_tensor(image)[None].to(device))[0]
        context = torch.cat([full, gen.encoder.image_block(feats)])
    return model.tokenizer.decode(text_ids, skip_special_tokens=True), images, pipeline_s


def onnx_generator(model, workdir: str, threads: int) -> Generator:
    """The same model on ONNX Runtime: saved, reloaded (the engine cache keys on the checkpoint), exported."""
    from dreamgen.engines import EngineCache, OnnxComponents, ensure_onnx_graphs
    from dreamgen.engines.build import graph_files
    from dreamgen.model.checkpoint import save_checkpoint
    from dreamgen.model.loader import load_model

    reloaded = load_model(str(save_checkpoint(model, f"{workdir}/model")))
    graphs = ensure_onnx_graphs(reloaded, "fp32", EngineCache(f"{workdir}/engines"))
    return Generator(reloaded, OnnxComponents(reloaded, graph_files(graphs), threads=threads))


def dreamgen_defaults() -> ModelDefaults:
    """The defaults of dreamgen's own default model (the shipped `shapes`), read from its checkpoint."""
    from dreamgen.model.builtin import builtin_model_dir
    from dreamgen.model.checkpoint import read_defaults

    folder = builtin_model_dir("shapes")
    return read_defaults(json.loads((folder / "config.json").read_text()), folder)


PAINTING = ("scheduler", "steps", "cache_interval", "cache_until", "guidance_until")  # what decides a picture's cost


def bench(name: str, docs: int, ours: str = "default", against: str = "naive", max_new_tokens: int = 96,
          max_images: int = 3, onnx: bool = False, threads: int = 1, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    if name == "shapes":  # dreamgen's default model, on prompts of its eval's phrasings split
        from dreamgen.model.loader import load_model
        from dreamgen.shapes.dataset import eval_prompts
        model = load_model("shapes", device=device)
        topics, temperature = [p.prompt for p in eval_prompts(docs, "pairs", seed=1001)], None  # the model's own
    else:
        model = build_tiny_model(seed=0, sizes=SIZES_OF[name], name=name).to(device)
        topics, temperature = [TOPICS[i % len(TOPICS)] for i in range(docs)], 1.0
    reference = {"scheduler": "ddpm", "steps": 50, "cache_interval": 1, "cache_until": 1.0, "guidance_until": 1.0}
    if ours.isdigit():
        mine = {**reference, "steps": int(ours)}
    else:  # the model's own, or them with some changed: "guidance_until=0.75,cache_until=0.6"
        mine = {name: getattr(dreamgen_defaults(), name) for name in PAINTING}
        for change in filter(None, ours.removeprefix("default").split(",")):
            key, value = change.split("=")
            mine[key] = type(mine[key])(value)

    def requests(settings: dict) -> list[DocumentRequest]:
        return [DocumentRequest(prompt=topic, params=GenerationParams(
            seed=i, max_new_tokens=max_new_tokens, max_images=max_images, temperature=temperature, **settings))
            for i, topic in enumerate(topics)]

    from dreamgen.generation.config import generator_config
    gen = Generator(model, config=generator_config())  # as `dreamgen run` builds it (painting: DREAMGEN_PAINTING)
    workdir = tempfile.TemporaryDirectory()
    onnx_gen = onnx_generator(model, workdir.name, threads) if onnx else None
    gen.unconditional()  # computed once per model by both ways; keep it out of both timings
    if onnx_gen:
        onnx_gen.unconditional()
    with torch.no_grad():  # warm the model up (first calls allocate and pick kernels); both sides share its modules
        gen.generate([DocumentRequest(prompt=topics[0], params=GenerationParams(seed=99, max_new_tokens=40, steps=2,
                                                                                  max_images=1))])

    def streamed(generator: Generator, settings: dict) -> tuple[list, float]:
        start = time.perf_counter()
        out = generator.generate(requests(settings))
        return out, time.perf_counter() - start

    with torch.no_grad():
        if against == "naive":
            pipe = StableDiffusionPipeline(vae=model.head.vae, text_encoder=None, tokenizer=None, unet=model.head.unet,
                                           scheduler=make_scheduler("ddpm", model.head.scheduler_config),
                                           safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            start = time.perf_counter()
            naive = [naive_document(gen, pipe, r) for r in requests(reference)]
            base_s = time.perf_counter() - start
            base_images = sum(n for _, n, _ in naive)
            share = sum(s for _, _, s in naive) / base_s
            base_texts = [(t, n) for t, n, _ in naive]
            base_painting = "naive"
        else:  # dreamgen before issue 32: DDPM 50, no cache, pictures gathered while the text waits
            old = Generator(model, config=generator_config(painting="gather"))
            old_docs, base_s = streamed(old, reference)
            base_images, share = sum(len(d.images) for d in old_docs), None
            base_texts = [(d.text, len(d.images)) for d in old_docs]
            base_painting = "gather"
        out, ours_s = streamed(gen, mine)
        ours_onnx, onnx_s = streamed(onnx_gen, mine) if onnx_gen else (None, None)
    workdir.cleanup()

    images = sum(len(d.images) for d in out)
    same = sum("".join(t.split()) == "".join(d.text.split()) and n == len(d.images)
               for (t, n), d in zip(base_texts, out))
    result = {"config": name + ("" if max_images else " text"), "docs": docs, "base_images": base_images,
              "ours_images": images, "same_documents": f"{same}/{docs}",
              "base": f"{base_painting}, " + ", ".join(f"{k} {v}" for k, v in reference.items()),
              "ours": f"{gen.config.painting}, " + ", ".join(f"{k} {v}" for k, v in mine.items()),
              "base_docs_per_min": 60 * docs / base_s, "ours_docs_per_min": 60 * docs / ours_s,
              "base_images_per_min": 60 * base_images / base_s, "ours_images_per_min": 60 * images / ours_s,
              "speedup": base_s / ours_s, "pictures_share": share}
    if ours_onnx is not None:
        result.update(onnx_images=sum(len(d.images) for d in ours_onnx), onnx_speedup=base_s / onnx_s)
    return result


SIZES_OF = {"tiny": None, "small": SMALL_SIZES}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "small", "shapes"], nargs="+", default=["small"])
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--ours", default="default", help="default (dreamgen's own model's settings), a DDPM step count, "
                                                      "or changes to the defaults: steps=20,guidance_until=0.75")
    ap.add_argument("--against", choices=["naive", "gather50"], default="naive")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-images", type=int, default=3, help="0 measures the text side alone")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of torch (and ONNX Runtime)")
    ap.add_argument("--onnx", action="store_true", help="also time dreamgen's side on the ONNX Runtime backend")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.device}, {args.threads} thread(s); {args.docs} documents, <= {args.max_new_tokens} tokens and "
          f"<= {args.max_images} images each")
    for name in args.config:
        r = bench(name, args.docs, args.ours, args.against, args.max_new_tokens, args.max_images, args.onnx,
                  args.threads, args.device)
        print(f"{r['config']}: {args.against} ({r['base']}) against dreamgen ({r['ours']})")
        print(f"  {args.against:>8}: {r['base_docs_per_min']:8.1f} docs/min "
              f"{r['base_images_per_min']:8.1f} pictures/min "
              f"({r['base_images']} pictures)" + (f", {r['pictures_share']:.0%} of its time painting"
                                                  if r["pictures_share"] is not None else ""))
        print(f"  {'dreamgen':>8}: {r['ours_docs_per_min']:8.1f} docs/min {r['ours_images_per_min']:8.1f} pictures/min "
              f"({r['ours_images']} pictures); {r['speedup']:.2f}x documents/minute, "
              f"{r['ours_images_per_min'] / r['base_images_per_min']:.2f}x pictures/minute; "
              f"same text {r['same_documents']}")
        if args.onnx:
            print(f"  onnx: {r['onnx_speedup']:.2f}x documents/minute ({r['onnx_images']} pictures)")


if __name__ == "__main__":
    main()
