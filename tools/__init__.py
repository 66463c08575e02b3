"""aldar capabilities: plain typed functions over files and models.

Nothing here talks to an LLM and nothing here imports ``agent``. Packages group a capability:
``training`` (the LoRA trainer), ``scoring`` (CLIP analysis, scores, feedback), ``generation``
(local SDXL + LoRA, PNG metadata, storybooks) and ``providers`` (hosted generators). The modules
at the top level are the foundation they share: ``errors``, ``atomic``, ``settings``, ``secrets``,
``devices``, ``models`` (profiles and loading), ``images``, ``progress`` and ``doctor``.
"""

__version__ = "0.1.0"
