"""ct_clip: CT-CLIP (a CTViT and CXR-BERT) zero-shot on 18 CT-RATE chest CT abnormalities."""
