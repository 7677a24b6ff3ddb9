"""retclip: RET-CLIP on ODIR-5K, three text encoders compared by zero-shot classification."""
