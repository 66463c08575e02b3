"""Training a LoRA: hyperparameters, data preparation, the training loop and the files it writes.

``trainer.train_lora`` is the loop (read it top to bottom); ``config`` holds the self-validating
``TrainConfig`` that also generates the CLI flags; ``data`` crops images and caches latents and text
embeddings; ``setup`` adds the adapters and builds accelerate and the optimizer; ``lora_files`` writes
the diffusers/kohya LoRA files and resumable checkpoints; ``report`` writes the loss log and curve.
"""
