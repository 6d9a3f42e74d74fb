"""The fleet manifest: load (YAML with line numbers), validate (JSON Schema +
semantic checks), build frozen objects, and diff two fleets into a plan."""

from herd.manifest.loader import Problem, load_bytes, load_file
from herd.manifest.model import Fleet, build_fleet, normalize_model_name

__all__ = [
    "Fleet",
    "Problem",
    "build_fleet",
    "load_bytes",
    "load_file",
    "normalize_model_name",
]
