"""Test stand-in for the parts of ComfyUI's ``comfy`` package this pack uses."""
