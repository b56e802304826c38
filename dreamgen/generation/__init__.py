"""The engine: a model in, illustrated documents out.

    generator.py   Generator: documents in lockstep, pictures gathered into UNet batches, fed back as image blocks
    components.py  the four component calls a backend provides (LM step, UNet, VAE decode, image encode)
    sampling.py    next tokens for a whole batch, each document with its own generator
    diffusion.py   denoising a batch of pictures exactly as diffusers' pipeline does
    images.py      pictures between Pillow and torch

May import model, prompts (templates) and the shared vocabulary; never jobs, storage or engines.
"""
