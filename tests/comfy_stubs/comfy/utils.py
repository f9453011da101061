"""Test stand-in for ``comfy.utils``: ``ProgressBar`` with ComfyUI's signature; every update is
recorded in ``UPDATES`` so tests can check what a node reported."""

PROGRESS_BAR_HOOK = None
UPDATES: list[tuple[int, int]] = []


class ProgressBar:
    def __init__(self, total, node_id=None):
        self.total = total
        self.current = 0
        self.node_id = node_id

    def update_absolute(self, value, total=None, preview=None):
        if total is not None:
            self.total = total
        self.current = min(value, self.total)
        UPDATES.append((self.current, self.total))

    def update(self, value):
        self.update_absolute(self.current + value)
