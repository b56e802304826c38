"""Documents per minute: dreamgen's lockstep batch vs the naive way, in one run, on the same model and prompts.

The naive way is what the reference scripts do: one prompt at a time, `LlamaForCausalLM.generate` until
`<dream_start>` or `</s>`, then a separate diffusers `StableDiffusionPipeline` call per image, the context
re-encoded from scratch after each picture. Both write the same documents (checked below): the naive way samples
through a logits processor that draws from the document's own generator exactly as dreamgen does, so the work
is the same token for token and picture for picture (temperature 1, so random models still place pictures).

    python bench/generation.py [--config tiny|small|both] [--docs 8] [--steps 10] [--threads 1] [--onnx]

--onnx adds a column: the same lockstep loop on the ONNX Runtime backend (graphs exported to a temporary engine
cache first, not timed), as `dreamgen run --backend onnx` runs it.

"pictures" is the share of the naive way's time spent inside the diffusers pipeline. Denoising is the same
arithmetic however the pictures are grouped, so where a UNet step is compute-bound (a CPU at 64x64 latents)
batching on the same torch UNet cannot beat 1 / that share, however fast the text goes; only a faster UNet can
(another backend, a GPU). Where the step is overhead-bound (the tiny model) batching pictures does pay.
"""
from __future__ import annotations

import argparse
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
from dreamgen.params import GenerationParams

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


def same_documents(a: list[tuple[str, int, float]], b) -> int:
    # Blocks are decoded one by one (a block's leading space is dropped), so compare without whitespace.
    return sum("".join(t.split()) == "".join(d.text.split()) and n == len(d.images) for (t, n, _), d in zip(a, b))


def bench(name: str, sizes: dict | None, docs: int, steps: int, max_new_tokens: int, max_images: int = 3,
          onnx: bool = False, threads: int = 1, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    model = build_tiny_model(seed=0, sizes=sizes, name=name).to(device)
    gen = Generator(model)
    workdir = tempfile.TemporaryDirectory()
    onnx_gen = onnx_generator(model, workdir.name, threads) if onnx else None
    pipe = StableDiffusionPipeline(vae=model.head.vae, text_encoder=None, tokenizer=None, unet=model.head.unet,
                                   scheduler=make_scheduler("ddpm", model.head.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    params = [GenerationParams(seed=i, steps=steps, max_new_tokens=max_new_tokens, max_images=max_images, temperature=1.0)
              for i in range(docs)]
    requests = [DocumentRequest(prompt=TOPICS[i % len(TOPICS)], params=p) for i, p in enumerate(params)]
    gen.unconditional()  # computed once per model by both ways; keep it out of both timings
    if onnx_gen:
        onnx_gen.unconditional()

    def lockstep(generator: Generator) -> tuple[list, float]:
        start = time.perf_counter()
        out = []
        for i in range(0, docs, 8):
            out += generator.generate(requests[i:i + 8])
        return out, time.perf_counter() - start

    with torch.no_grad():
        start = time.perf_counter()
        naive = [naive_document(gen, pipe, r) for r in requests]
        naive_s = time.perf_counter() - start
        ours, ours_s = lockstep(gen)
        ours_onnx, onnx_s = lockstep(onnx_gen) if onnx_gen else (None, None)
    workdir.cleanup()

    images = sum(len(d.images) for d in ours)
    result = {"config": name + ("" if max_images else " text"), "docs": docs, "images": images,
              "same_documents": f"{same_documents(naive, ours)}/{docs}",
              "naive_docs_per_min": 60 * docs / naive_s, "ours_docs_per_min": 60 * docs / ours_s,
              "naive_images_per_min": 60 * images / naive_s, "ours_images_per_min": 60 * images / ours_s,
              "speedup": naive_s / ours_s,
              "pictures_share": sum(s for _, _, s in naive) / naive_s}
    if ours_onnx is not None:
        result.update(onnx_same_documents=f"{same_documents(naive, ours_onnx)}/{docs}", onnx_speedup=naive_s / onnx_s)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["tiny", "small", "both"], default="both")
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--max-images", type=int, default=3, help="0 measures the text side alone")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of torch (and ONNX Runtime)")
    ap.add_argument("--onnx", action="store_true", help="also time the lockstep loop on the ONNX Runtime backend")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    configs = {"tiny": None, "small": SMALL_SIZES}
    names = ["tiny", "small"] if args.config == "both" else [args.config]
    print(f"{args.device}, {args.threads} thread(s); {args.docs} documents, {args.steps} denoising steps, "
          f"<= {args.max_new_tokens} tokens and <= {args.max_images} images each")
    print(f"{'config':12} {'docs':>4} {'images':>6} {'same':>6} {'naive docs/min':>15} {'ours docs/min':>14} "
          f"{'naive img/min':>14} {'ours img/min':>13} {'pictures':>8} {'speedup':>8}" + (f" {'onnx same':>9} {'onnx speedup':>12}" if args.onnx else ""))
    for name in names:
        r = bench(name, configs[name], args.docs, args.steps, args.max_new_tokens, args.max_images, args.onnx, args.threads,
                  args.device)
        print(f"{r['config']:12} {r['docs']:>4} {r['images']:>6} {r['same_documents']:>6} {r['naive_docs_per_min']:>15.1f} "
              f"{r['ours_docs_per_min']:>14.1f} {r['naive_images_per_min']:>14.1f} {r['ours_images_per_min']:>13.1f} "
              f"{r['pictures_share']:>8.0%} {r['speedup']:>7.2f}x" + (f" {r['onnx_same_documents']:>9} {r['onnx_speedup']:>11.2f}x" if args.onnx else ""))


if __name__ == "__main__":
    main()
