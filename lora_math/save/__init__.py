"""Saving every kind of result (trained, merged, resized, extracted, converted LoRAs) as a file every tool loads."""
