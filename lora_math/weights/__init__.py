"""Updating model weights with adapters: merged in place (static LoRAs) or as side paths on layer outputs (scheduled)."""
