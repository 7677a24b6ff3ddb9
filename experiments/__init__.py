"""The experiments of the suite, one package each (see README.md in this directory)."""
