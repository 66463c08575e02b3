"""The text the LLM reads (``*.md``), installed as the package ``aldar_prompts`` so that a wheel ships it.

Loaded by ``agent.llm.prompts``; this folder holds no code.
"""
