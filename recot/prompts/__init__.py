"""Bundled Jinja prompt templates (package data), one per task; see synth.prompts."""
