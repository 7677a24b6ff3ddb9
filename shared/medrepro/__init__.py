"""medrepro: the shared training library behind every experiment of the suite."""

__version__ = "0.1.0"
