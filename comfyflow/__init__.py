"""comfyflow: run image-generation workloads on ComfyUI servers at production quality."""

from importlib.metadata import PackageNotFoundError, version

from comfyflow.models import Img2ImgRequest, JobRequest, JobState, RawGraphRequest, Txt2ImgRequest
from comfyflow.settings import Settings

try:
    __version__ = version("comfyflow")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = [
    "Img2ImgRequest",
    "JobRequest",
    "JobState",
    "RawGraphRequest",
    "Settings",
    "Txt2ImgRequest",
    "__version__",
]
