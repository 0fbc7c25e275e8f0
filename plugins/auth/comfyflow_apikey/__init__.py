"""comfyflow's first-party API-key auth plugin: ``cf_live_<key id>_<secret><checksum>`` keys, users, roles.

Registered as ``apikey`` in the ``comfyflow.auth`` entry-point group.
"""

from importlib.metadata import PackageNotFoundError, version

from comfyflow_apikey.keys import KEY_PATTERN, ParsedKey, new_key, parse_key
from comfyflow_apikey.plugin import ApiKeyAuth

try:
    __version__ = version("comfyflow")  # shipped inside the comfyflow distribution
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["KEY_PATTERN", "ApiKeyAuth", "ParsedKey", "__version__", "new_key", "parse_key"]
