"""UTA: distil a frozen CLIP-like teacher into a ViT from its unmasked tokens (DESIGN 1.3)."""
