"""Judging pictures against the references with CLIP: feature analysis, scores and feedback.

``analyzer`` finds the references' key features (zero-shot over the ``taxonomy``); ``scorer`` scores
generated images (CLIP similarity, feature match, SSIM), ranks the generators and turns the comparison
into feedback; ``clip`` embeds images and texts; ``embedding_cache`` keeps image embeddings on disk.
"""
