"""exmed_bert: ExMed-BERT on medical-code sequences, from random or ClinVec initialisation, against tree models."""
