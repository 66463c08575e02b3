"""Bundled example inputs, installed as the package ``aldar_examples`` so that a wheel ships them.

``aldar_kose/`` holds the default reference pictures and feature taxonomy (``tools.settings.BUNDLED_REFERENCES``).
"""
