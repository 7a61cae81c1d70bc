"""recot: reasoning training data for generative recommenders.

One import namespace, rooms bottom first: ``recot.errors``/``config``/``io``/``cost``, ``recot.formats`` (the
shared formats: SIDs, the think block, grounding, the student prompt, splits, tasks), ``recot.data`` (catalog,
loaders, SID building), ``recot.teachers`` (the teacher registry), ``recot.synth`` (synthesis jobs),
``recot.curation`` (DuckDB store, rules, dedup, judges, review, export), ``recot.trainer`` (SID vocabulary, SFT,
GRPO, evaluation), ``recot.runs`` (pipeline, ablation, recipe) and ``recot.cli``; beside them ``recot.prompts``
(Jinja templates), ``recot.data_cards`` and ``recot.testing`` (local servers for your own tests). Heavy parts
(torch, vLLM) load only where they are used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recot")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
