"""model nodes (being built)."""

NODE_CLASSES: list[type] = []
