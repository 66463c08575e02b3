"""aldar capabilities: analyzer, scorer, trainer, generators and model loading.

Plain typed functions over files and models. Nothing here talks to an LLM and
nothing here imports ``agent``.
"""

__version__ = "0.1.0"
