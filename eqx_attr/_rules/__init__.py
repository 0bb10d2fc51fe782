"""Rewrites of the traced model: rule tables and rule-based backward passes."""
