"""Transformer explanations: attention rollout, Chefer relevance, CP-LRP."""
