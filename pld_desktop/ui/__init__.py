"""The Qt user interface: adapters over the core (the only package that imports PySide6)."""
