"""The toy world of the ``tiny`` profile: a parametric character world and the models trained in it.

It owns:

* ``attributes`` — the drawable attributes (one per taxonomy category, plus pose and placement), how a
  character is sampled, labelled and captioned, and which characters the base model never sees
  (Aldar Köse's signature);
* ``draw`` — the PIL renderer: any point of the world to an RGB picture, deterministic from a seed;
* ``dataset`` — batches of pictures as arrays with their labels and captions, thousands per minute;
* ``tokenizer`` — the world's BPE tokenizer, in CLIP's two files;
* ``recipe`` / ``runners`` / ``checkpoints`` / ``nets`` / ``export`` / ``build`` — training CLIP, VAE and
  SDXL-layout UNet from seeds (``python -m tools.world.build``): the stages as records, one runner per kind,
  resumable, exported as fp16 safetensors under ``weights/``.

Scores computed with these models mean something inside this world only: they show the loop working
(a LoRA learning a character its base cannot draw), not how real SDXL would fare.
"""

from pathlib import Path

# The committed fp16 weights: ``clip/`` (CLIPModel + tokenizer) and ``sdxl/`` (a StableDiffusionXLPipeline folder).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Euler steps the toy world's UNet needs for clean pictures (more change little; 4 leave them noisy).
TINY_SAMPLING_STEPS = 20
