"""recot: reasoning training data for generative recommenders.

One import namespace over the design card's folders: ``recot.synth`` (data model, teachers,
synthesis jobs), ``recot.prompts`` (Jinja templates), ``recot.curation`` (DuckDB store, rules,
dedup, judges, review, export), ``recot.trainer`` (SID vocabulary, SFT, GRPO, evaluation),
``recot.data_cards``, ``recot.runs.pipeline`` (``recot run``) and ``recot.testing`` (tiny models and
local servers for your own tests). Heavy parts (torch, vLLM) load only where they are used.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("recot")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
