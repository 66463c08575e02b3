"""Making pictures locally and saving them with their settings.

``local`` runs SDXL with or without a LoRA; ``png_metadata`` writes and reads A1111-style generation
parameters in PNG files (hosted generators in ``tools.providers`` save through it too); ``storybook``
writes a finished story as JSON, Markdown and HTML.
"""
