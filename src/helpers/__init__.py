"""tunebook helpers: the logic behind the notebooks, one module per concern."""
