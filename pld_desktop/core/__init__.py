"""The Qt-free engine: dataset import, the project file, the four phases, metrics and export."""
