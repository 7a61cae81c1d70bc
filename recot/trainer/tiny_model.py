"""A tiny random causal LM with a real tokenizer, built locally in about a second.

No weights can be downloaded on CI machines, yet the teacher engines (vLLM in-process and its
OpenAI-compatible server) and the TRL trainers must run for real. This builds a Qwen2-architecture
model with random weights and a byte-level BPE trained on the given texts, with a ChatML template
that carries ``{% generation %}`` markers (assistant-only loss) and optional SID tokens added as
ordinary (not special) tokens, so that decoding with ``skip_special_tokens=True`` keeps them.
It emits garbage; use it to test mechanics, never quality.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's pre-tokenizer split: transformers rebuilds a qwen2 tokenizer with it, so train with the same.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
JSON_WORDS = ('{"}:[],0123456789 true false null persona prototype evidence interests name transition recent follows '
              'reasoning answer caption attributes relation rationale score faithful reason')


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str] = (),
    sid_tokens: Sequence[str] = (),
    vocab_size: int = 2000,
    hidden_size: int = 128,
    layers: int = 2,
    seed: int = 0,
) -> Path:
    """Write a random Qwen2 model and its tokenizer to ``out_dir``; returns the folder.

    ``hidden_size / 2`` is the head dimension: vLLM's CPU attention needs 32, 64 or 128.
    """
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator([JSON_WORDS, *texts], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    if sid_tokens:
        tokenizer.add_tokens(list(sid_tokens), special_tokens=False)
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    Qwen2ForCausalLM(config).save_pretrained(out)
    return out
