"""The shared formats every stage reads and none re-derives: SID grammar, think block and CoT layout, grounding,
student prompt, split, task declarations and output schemas. Nothing here imports another room of recot."""
