"""audio nodes (being built)."""

NODE_CLASSES: list[type] = []
