"""Project callbacks (Lightning's own are configured directly in configs/callbacks)."""
