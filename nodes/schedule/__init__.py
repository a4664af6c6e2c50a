"""Strength schedules: Loom LoRA Schedule makes one, Loom Schedule LoRA gives it to one LoRA of a stack."""
