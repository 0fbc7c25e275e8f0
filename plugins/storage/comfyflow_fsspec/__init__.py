"""comfyflow's first-party storage plugin: artifacts on any fsspec URL (local folder, memory, S3 via s3fs).

Registered as ``fsspec`` in the ``comfyflow.storage`` entry-point group.
"""

from importlib.metadata import PackageNotFoundError, version

from comfyflow_fsspec.storage import FsspecStorage

try:
    __version__ = version("comfyflow")  # shipped inside the comfyflow distribution
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["FsspecStorage", "__version__"]
