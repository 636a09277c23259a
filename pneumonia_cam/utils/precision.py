"""The numeric precisions that inference, feature extraction and serving run at (bf16: autocast)."""

PRECISIONS = ("fp32", "bf16")
