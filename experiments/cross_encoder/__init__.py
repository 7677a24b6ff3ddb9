"""cross_encoder: a cross-encoder re-ranker for UMLS entity linking on MedMentions."""
