"""Multiple-choice benchmark loaders: native files (or hub rows) -> `MCQRecord`s, one module per format.

Use `load_benchmark("medqa")`, `load_benchmark("path/to/file.json")` or
`load_benchmark("hub:GBaker/MedQA-USMLE-4-options")`; `exclusion_list` turns the loaded items into the
`{id, question}` entries the skill build uses to keep evaluation items out of training.
"""

from mdkif.data.mcq.registry import (
    DEFAULT_PATHS,
    FORMATS,
    data_root,
    detect_format,
    exclusion_list,
    load_benchmark,
    write_exclusions,
)

__all__ = [
    "DEFAULT_PATHS",
    "FORMATS",
    "data_root",
    "detect_format",
    "exclusion_list",
    "load_benchmark",
    "write_exclusions",
]
