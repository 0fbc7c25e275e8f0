"""comfyflow's second first-party auth scheme: JWT bearer tokens (HS256 shared secret or a JWKS file).

Registered as ``jwt`` in the ``comfyflow.auth`` entry-point group. A claim (``role`` by default) names the
caller's role through ``COMFYFLOW_JWT__ROLES``.
"""

from importlib.metadata import PackageNotFoundError, version

from comfyflow_jwt.plugin import JwtAuth, principal_id

try:
    __version__ = version("comfyflow")  # shipped inside the comfyflow distribution
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["JwtAuth", "__version__", "principal_id"]
