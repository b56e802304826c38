"""The shapes world: a toy domain of illustrated articles about coloured shapes, small enough to train a whole
DreamLLM on a CPU, and simple enough to check every picture against its text by pixel statistics.

    world.py     attributes (colours, shapes, sizes, positions, backgrounds) and the held-out (colour, shape) pairs
    render.py    pictures, drawn with Pillow
    phrasing.py  how people ask: the prompt grammar, its held-out part, synonyms and stand-ins ("a star")
    articles.py  articles in a few styles, each picture right after the sentence describing it
    dataset.py   the training set in dreamgen's interleaved JSONL format, and the eval's held-out splits
    checker.py   reads a picture (colour, shape, background, ...) and the text around it
    evaluation.py  `dreamgen eval`: do a model's pictures show what its text says?
    roundtrip.py  how well a VAE keeps each kind readable

May import training, generation, model and the shared vocabulary.
"""
