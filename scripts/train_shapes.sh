#!/usr/bin/env bash
# Reproduce the built-in `shapes` model from nothing, on CPU (80 minutes to the shipped files on a 2-core machine, 2026-12-08; docs/shapes-model.md):
#   1. write the shapes world's training set      runs/shapes/data/train.jsonl
#      (prompts from the phrasing grammar's training part; pictures seeded apart from words, so a change to
#      the wording never changes a picture; no held-out pair), and pictures of the whole world, held-out
#      pairs too, for the VAE's last stage         runs/shapes/data/pictures/
#   2. train its VAE                               runs/shapes/vae/final/          (configs/shapes-vae.yaml)
#   3. train the whole DreamLLM (I-GPT, with the readout loss that reads each picture's attributes back from
#      its condition) on the first set and the binding set together
#                                                  runs/shapes/model/final/        (configs/shapes.yaml)
#   4. sharpen the VAE's decoder, encoder fixed    runs/shapes/vae-decoder/final/  (configs/shapes-vae-decoder.yaml)
#   5. sharpen it further, weighing the shapes'    runs/shapes/vae-decoder-edges/final/
#      pixels more (small diamonds and crosses)    (configs/shapes-vae-decoder-edges.yaml)
#   6. and again at half the rate                  runs/shapes/vae-decoder-fine/final/
#                                                  (configs/shapes-vae-decoder-fine.yaml)
#   7. and again on the whole world's pictures,    runs/shapes/vae-decoder-world/final/
#      so it draws the held-out pairs too          (configs/shapes-vae-decoder-world.yaml)
#      (4 to 7 need only stage 2's VAE: they run on the second core while stage 3 runs on the first)
#   8. binding: train stage 3's model on at a third of its rate, on the same two sets (documents of two and
#      three shapes that ask each shape its own size and place, and prompts inside dreamgen's templates)
#                                                  runs/shapes/binding/final/     (configs/shapes-binding.yaml)
#      (on the first core after stage 3; it reads only the VAE's encoder, which the decoder stages keep)
#   9. ship stage 8's model with stage 7's decoder dreamgen/model/weights/shapes/
#      and the guidance, steps and shares of them it paints with when a request names none (GUIDANCE: chosen on validation prompts, seeds
#      of their own, not the eval's; docs/shapes-model.md has the sweep)
#  10. evaluate it on the three held-out splits (unseen colour-kind pairs, unseen phrasings, two shapes with
#      their own sizes; nothing here chooses on them, though docs/shapes-model.md's candidate runs, which set
#      configs/shapes.yaml, were compared on them), and with the paths from text to picture cut
# Every stage is seeded, single-threaded (so deterministic) and resumable: run the script again after a stop.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DREAMGEN="$PY cli.py"
RUNS=runs/shapes
PICTURES=15000  # of the whole world, for the last decoder stage
GUIDANCE=3  # the shipped model's own classifier-free guidance (the reference's 7.5 turns green on black blue)
STEPS=25  # its own DDPM steps: every eval column within 1 point of 50 steps at half the UNet work (docs/pictures.md)
# and its own way through them: guided through the first 75% of the steps, the UNet's deep features reused every
# other step through the first 60% (a quarter less UNet work again; every eval column within 1 point of DDPM 50)
GUIDANCE_UNTIL=0.75
CACHE_INTERVAL=2
CACHE_UNTIL=0.6

if [ ! -s "$RUNS/data/binding.jsonl" ] || [ ! -s "$RUNS/data/pictures/$(printf %06d $((PICTURES - 1))).png" ]; then
  $PY -m dreamgen.shapes "$RUNS/data" --documents 10000 --binding 6000 --pictures $PICTURES --seed 0
fi
[ -f "$RUNS/vae/final/config.json" ] || $DREAMGEN train configs/shapes-vae.yaml
sharpen_decoder() {
  [ -f "$RUNS/vae-decoder/final/config.json" ] || $DREAMGEN train configs/shapes-vae-decoder.yaml
  [ -f "$RUNS/vae-decoder-edges/final/config.json" ] || $DREAMGEN train configs/shapes-vae-decoder-edges.yaml
  [ -f "$RUNS/vae-decoder-fine/final/config.json" ] || $DREAMGEN train configs/shapes-vae-decoder-fine.yaml
  [ -f "$RUNS/vae-decoder-world/final/config.json" ] || $DREAMGEN train configs/shapes-vae-decoder-world.yaml
}
sharpen_decoder > "$RUNS/decoder.log" 2>&1 &
decoder=$!
[ -f "$RUNS/model/final/config.json" ] || $DREAMGEN train configs/shapes.yaml
[ -f "$RUNS/binding/final/config.json" ] || $DREAMGEN train configs/shapes-binding.yaml
wait $decoder || { echo "decoder stages failed; see $RUNS/decoder.log"; exit 1; }

if [ ! -d "$RUNS/shipped" ]; then  # written aside, then moved: a stop never leaves half a model
  rm -rf "$RUNS/shipped.partial"
  $PY -c "from dreamgen.training.trainer import replace_vae; \
replace_vae('$RUNS/binding/final', '$RUNS/vae-decoder-world/final', '$RUNS/shipped.partial', guidance=$GUIDANCE, \
defaults={'steps': $STEPS, 'guidance_until': $GUIDANCE_UNTIL, 'cache_interval': $CACHE_INTERVAL, 'cache_until': $CACHE_UNTIL})"
  mv "$RUNS/shipped.partial" "$RUNS/shipped"
fi

# The released layout, plus __init__.py files so the package data (*.json, *.safetensors) ships every folder.
TARGET=dreamgen/model/weights/shapes
rm -rf "$TARGET"
cp -r "$RUNS/shipped" "$TARGET"
$PY -m dreamgen.shapes.roundtrip "$TARGET"
touch dreamgen/model/weights/__init__.py
for dir in "$TARGET" "$TARGET"/*/; do touch "$dir/__init__.py"; done
du -sh "$TARGET"

$DREAMGEN eval --model shapes --prompts 200
$DREAMGEN eval --model shapes --prompts 40 --ablate queries --ablate condition
$DREAMGEN eval --model tiny-random --prompts 60
