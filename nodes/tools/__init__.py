"""Tools over LoRAs and stacks: interference, balance, merge, resize, convert and extract."""
