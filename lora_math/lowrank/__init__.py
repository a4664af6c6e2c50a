"""Weight updates as low-rank factors, and the analyses built on them (interference between the LoRAs of a stack)."""
