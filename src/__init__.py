"""Entry points run as scripts (`python src/train.py ...`); the library is the `pneumonia_cam` package."""
