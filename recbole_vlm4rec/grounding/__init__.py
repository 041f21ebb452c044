"""Grounding stage: item images -> preference-oriented descriptions written by a vision-language model."""
