"""biomedica_clip: OpenCLIP fine-tuned with open_clip_train on BIOMEDICA-style WebDataset shards."""
