"""lazydrift."""
