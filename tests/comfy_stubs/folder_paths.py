"""Test stand-in for ComfyUI's ``folder_paths`` (used only when ComfyUI is not importable).

Same names and behaviour as ComfyUI's module for the calls this pack makes; the folders live in a
temporary directory that ``tests/conftest.py`` sets through :func:`set_base`.
"""

import os

supported_pt_extensions = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
base_path = ""
models_dir = ""
folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
_input_dir = _output_dir = _temp_dir = ""


def set_base(path: str) -> None:
    global base_path, models_dir, _input_dir, _output_dir, _temp_dir
    base_path = path
    models_dir = os.path.join(path, "models")
    _input_dir, _output_dir, _temp_dir = (os.path.join(path, d) for d in ("input", "output", "temp"))
    for d in (models_dir, _input_dir, _output_dir, _temp_dir):
        os.makedirs(d, exist_ok=True)
    folder_names_and_paths.clear()
    folder_names_and_paths["vae"] = ([os.path.join(models_dir, "vae")], set(supported_pt_extensions))
    folder_names_and_paths["loras"] = ([os.path.join(models_dir, "loras")], set(supported_pt_extensions))


def get_input_directory() -> str:
    return _input_dir


def get_output_directory() -> str:
    return _output_dir


def get_temp_directory() -> str:
    return _temp_dir


def get_folder_paths(folder_name: str) -> list[str]:
    return folder_names_and_paths[folder_name][0][:]


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    if folder_name in folder_names_and_paths:
        paths = folder_names_and_paths[folder_name][0]
        if full_folder_path not in paths:
            paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path)
    else:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())


def filter_files_extensions(files, extensions):
    return sorted(f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions)


def get_filename_list(folder_name: str) -> list[str]:
    paths, exts = folder_names_and_paths[folder_name]
    found = set()
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for f in files:
                found.add(os.path.relpath(os.path.join(dirpath, f), root))
    return filter_files_extensions(found, exts)


def get_full_path(folder_name: str, filename: str):
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        path = os.path.join(root, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def annotated_filepath(name: str):
    if name.endswith("[output]"):
        return name[:-9], get_output_directory()
    if name.endswith("[input]"):
        return name[:-8], get_input_directory()
    if name.endswith("[temp]"):
        return name[:-7], get_temp_directory()
    return name, None


def get_annotated_filepath(name: str, default_dir=None) -> str:
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = default_dir if default_dir is not None else get_input_directory()
    return os.path.join(base_dir, name)


def exists_annotated_filepath(name) -> bool:
    return os.path.exists(get_annotated_filepath(name))
