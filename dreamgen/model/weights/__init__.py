"""Built-in trained models, shipped as package data in the released checkpoint layout (see ../builtin.py).
Each folder is written by a script in scripts/ (shapes: scripts/train_shapes.sh); the __init__.py files only make
setuptools ship every folder."""
