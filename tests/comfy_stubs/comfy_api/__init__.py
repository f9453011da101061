"""Test stand-in for ComfyUI's ``comfy_api`` package (only the VIDEO input classes this pack uses)."""
