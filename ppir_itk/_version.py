"""The package version, in one place: ``pyproject.toml`` reads it, ``ppir_itk`` re-exports it."""

__version__ = "0.1.0"
