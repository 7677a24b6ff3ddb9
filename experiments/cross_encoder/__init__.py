"""cross_encoder: a SapBERT cross-encoder re-ranking UMLS concepts for MedMentions mentions."""
