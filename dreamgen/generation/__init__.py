"""Generation: a model in, illustrated documents out.

    generator.py   Generator: documents stream through a slot pool, pictures fed back as image blocks
    components.py  the component calls a backend provides (UNet, VAE decode, image encode); the LM runs on torch
    runner.py      the LM step over the paged KV pool (lm.py, attention.py, kv.py): buckets, graphs, compile
    scheduler.py   admission, who feeds what each step, when pictures are painted
    config.py      GeneratorConfig: the generator's knobs in one object
    sampling.py    next tokens on the device, each draw keyed by its document's seed and position
    diffusion.py   denoising a batch of pictures exactly as diffusers' pipeline does
    images.py      pictures between Pillow and torch

May import model, prompts (templates) and the shared vocabulary; never jobs, storage or engines.
"""
