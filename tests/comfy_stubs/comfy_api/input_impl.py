"""Test stand-in for ``comfy_api.input_impl``: ``VideoFromFile`` with the methods of ComfyUI's (0.3.64):
``get_stream_source``, ``get_dimensions``, ``get_duration``, ``save_to`` (a stream copy for AUTO)."""

from __future__ import annotations

import io
import os
import shutil

import av


class VideoFromFile:
    def __init__(self, file: str | io.BytesIO):
        self.__file = file

    def get_stream_source(self) -> str | io.BytesIO:
        if isinstance(self.__file, io.BytesIO):
            self.__file.seek(0)
        return self.__file

    def get_dimensions(self) -> tuple[int, int]:
        with av.open(self.get_stream_source()) as container:
            stream = container.streams.video[0]
            return stream.width, stream.height

    def get_duration(self) -> float:
        with av.open(self.get_stream_source()) as container:
            return float(container.duration / av.time_base)

    def save_to(self, path, format="auto", codec="auto", metadata=None):
        source = self.get_stream_source()
        if isinstance(source, io.BytesIO):
            with open(path, "wb") as out:
                out.write(source.getvalue())
        elif os.path.abspath(source) != os.path.abspath(path):
            shutil.copyfile(source, path)
