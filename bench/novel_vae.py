"""What the toy pipeline can draw of a character at best: its references round-tripped through the toy VAE.

    python bench/novel_vae.py                              # Aldar Köse (baseline) and King Zorabek
    python bench/novel_vae.py --character zorabek --save DIR

A LoRA trains on the VAE's latents of the references and draws through its decoder, so what survives the round
trip (encode → decode, no noise, no UNet) bounds what any LoRA of the pipeline can draw. Printed per bundled
character: the round trips' reconstruction error (mean squared, pixels in -1..1), and the scorer's reading of
them against the references — quality, CLIP similarity, key features and each key feature's pass rate — beside
the same of the references themselves (each against the others, the scorer's reference ceiling).

The toy VAE was first trained on the world without its novel values (tools/world/weights/MODEL_CARD.md, split 1),
unlike a real SDXL VAE, which reconstructs any colour; its decoder then learnt them (stage decoder5, half of each
batch from the novel split, on the same locked encoder). Measured (toy world, tiny; deterministic, no seed):

    character   VAE       MSE    quality  CLIP   features  (references' own)    per feature (round trips)
    aldar_kose  decoder4  0.013  0.630    0.711  0.500     (0.708 0.744 0.747)  orange patterned robe 0.6, skullcap 0.4,
                                                                                thin mustache 0.2, smiling 0.8
                decoder5  0.013  0.655    0.723  0.550                          orange patterned robe 1.0, skullcap 0.4,
                                                                                thin mustache 0.4, smiling 0.4
    zorabek     decoder4  0.043  0.463    0.256  0.475     (0.803 0.801 0.861)  crown 0.0, purple robe 0.0,
                                                                                round glasses 0.2, goatee 0.6
                decoder5  0.013  0.786    0.750  0.775                          crown 1.0, purple robe 0.2,
                                                                                round glasses 0.8, goatee 1.0

With decoder4 King Zorabek's purple robe came back green and his gold crown as a red cap: no LoRA of the toy
pipeline could draw them. With decoder5 the crown comes back yellow and the glasses and goatee drawn; the robe
comes back blue-violet, read as purple on one round trip of five. Every figure holds inside the toy world only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tools.settings import BUNDLED_REFERENCES, load_settings  # noqa: E402

EXAMPLES = BUNDLED_REFERENCES.parent


def round_trip(vae, path: Path, size: int, out: Path) -> tuple[Path, float]:
    """``path`` encoded (the latent mean, as the trainer caches it) and decoded; the file and its MSE."""
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((size, size))
    pixels = torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels.to(vae.dtype)).latent_dist.mean).sample.float().clamp(-1, 1)
    error = float(((decoded - pixels) ** 2).mean())
    array = ((decoded[0] + 1) * 127.5).permute(1, 2, 0).numpy().round().astype("uint8")
    target = out / path.name
    Image.fromarray(array).save(target)
    return target, error


def measure(character: str, out: Path) -> dict:
    from tools.models import load_sdxl_pipeline, resolve_profile
    from tools.scoring.analyzer import analyze_references
    from tools.scoring.scorer import score_generators

    references = EXAMPLES / character
    # its character.json gives the trigger and the name (tools.settings)
    settings = load_settings(overrides={"profile": "tiny", "references": str(references)}, environ={})
    profile = resolve_profile(settings)
    vae = load_sdxl_pipeline(profile).vae
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyze_references(references, profile, settings.taxonomy_path(), settings.trigger_token,
                                  settings.character_name, out / "analysis.json")
    trips = [round_trip(vae, path, profile.resolution, out) for path in sorted(references.glob("*.png"))]
    report = score_generators({"round trip": [path for path, _ in trips]}, references, profile, analysis,
                              settings.metric_weights)
    summary, ceiling = report["generators"]["round trip"], report.get("ceiling") or {}
    return {"mse": sum(e for _, e in trips) / len(trips), "quality": summary["quality"]["mean"],
            "clip": summary["clip"]["mean"], "features": summary["features"]["mean"],
            "feature_pass_rate": summary["feature_pass_rate"],
            "ceiling": {k: (ceiling.get(k) or {}).get("mean") if isinstance(ceiling.get(k), dict) else ceiling.get(k)
                        for k in ("quality", "clip", "features")}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--character", action="append", default=None, help="a bundled example (repeatable)")
    parser.add_argument("--save", type=Path, default=None, help="keep the round trips here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = args.save or Path(tempfile.mkdtemp(prefix="aldar-vae-"))
    print("Toy world, tiny: every figure holds inside the toy world only.")
    for character in args.character or ["aldar_kose", "zorabek"]:
        figures = measure(character, out / character)
        ceiling = figures["ceiling"]
        print(f"\n{character}: round trip MSE {figures['mse']:.3f}; quality {figures['quality']:.3f}, CLIP "
              f"{figures['clip']:.3f}, key features {figures['features']:.3f} (the references' own: quality "
              f"{ceiling['quality']:.3f}, CLIP {ceiling['clip']:.3f}, features {ceiling['features']:.3f})")
        print("  per key feature (round trips): " + ", ".join(f"{feature} {rate:.1f}" for feature, rate
                                                              in figures["feature_pass_rate"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
