"""A ready PostgreSQL cluster with Prefect's database migrated, copied into each new home instead of running
``initdb`` and every Prefect migration again (together most of a fresh home's first start).

The template is a stopped cluster in ``$TMPDIR/comfyflow-pg-template-<uid>/<key>/`` (the temp folder, not
``~/.cache``: as root the server runs as an unprivileged user who must reach it), keyed by the PostgreSQL and
Prefect versions. ``comfyflow services prepare`` (run by ``scripts/setup``) builds it; without it the first fresh
home builds it, and every later one copies it (~0.3 s). A copied cluster gets a new password at its first start.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from comfyflow.embedded.supervisor import EmbeddedServiceError, read_state, service_lock, write_state

log = logging.getLogger(__name__)
READY = "ready"


def template_root() -> Path:
    return Path(
        os.environ.get("COMFYFLOW_TEMPLATE_DIR") or Path(tempfile.gettempdir()) / f"comfyflow-pg-template-{os.getuid()}"
    )


def template_home() -> Path:
    """The home folder holding the template cluster for the installed PostgreSQL and Prefect versions."""
    return template_root() / f"pg{_pg_version()}-prefect{importlib.metadata.version('prefect')}" / "home"


def ensure_template() -> Path:
    """Build the template cluster unless it exists; return its home folder (``<home>/postgres/data`` in it)."""
    from comfyflow.embedded.postgres import ensure_postgres, stop_postgres
    from comfyflow.embedded.prefect import prefect_executable, server_env

    home = template_home()
    root = template_root()
    root.mkdir(mode=0o700, exist_ok=True)
    if root.is_symlink() or root.stat().st_uid != os.getuid():
        raise EmbeddedServiceError(f"{root} belongs to another user; remove it or set COMFYFLOW_TEMPLATE_DIR")
    with service_lock(home.parent):
        if (home.parent / READY).exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        try:
            url = ensure_postgres(home, template=False)
            env = server_env("http://127.0.0.1:1/api", url, home / "prefect-home")
            out = subprocess.run([*prefect_executable(), "server", "database", "upgrade", "-y"], env=env,
                                 capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)  # fmt: skip
            if out.returncode != 0:
                raise EmbeddedServiceError(
                    f"migrating the template database failed:\n{(out.stdout + out.stderr)[-3000:]}"
                )
        finally:
            stop_postgres(home)
        state = read_state(home / "postgres")
        write_state(home / "postgres", {**state, "prefect_migrated_by": importlib.metadata.version("prefect")})
        (home.parent / READY).write_text("")
        log.info("built the PostgreSQL template with Prefect's database migrated in %s", home)
        return home


def copy_template(folder: Path) -> dict | None:
    """Copy the template cluster into ``folder/data`` (a new home's postgres folder); return its state (password,
    databases) or None when there is no template to copy (or it could not be built)."""
    try:
        home = ensure_template()
    except (EmbeddedServiceError, OSError, subprocess.SubprocessError) as exc:
        log.warning("no PostgreSQL template (%s); creating the cluster from scratch", exc)
        return None
    source = home / "postgres"
    state = read_state(source)
    if not state.get("password") or not (source / "data" / "PG_VERSION").exists():
        return None
    shutil.rmtree(folder / "data", ignore_errors=True)
    shutil.copytree(source / "data", folder / "data", symlinks=True)
    (folder / "data").chmod(0o700)
    return {
        "databases": list(state.get("databases", [])),
        "password": state["password"],
        "prefect_migrated_by": state.get("prefect_migrated_by"),
        "rotate_password": True,
    }


def _pg_version() -> str:
    from comfyflow.embedded.postgres import postgres_bin

    out = subprocess.run([str(postgres_bin() / "postgres"), "--version"], capture_output=True, text=True)
    return out.stdout.split()[-1] if out.returncode == 0 else "unknown"
