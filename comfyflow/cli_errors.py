"""One clear line per command-line error, naming the option: ``error: --width -5: must be at least 64``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

import annotated_types
import pydantic
import typer
from rich.console import Console
from rich.text import Text

err = Console(stderr=True)
#: Request fields whose option has another name.
OPTION_NAMES = {"negative_prompt": "--negative", "cfg_scale": "--cfg", "labels": "--label"}


def option_for(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def fail(option: str | None, message: str, code: int = 2) -> NoReturn:
    """Print ``error: <option>: <message>`` on one line and exit with ``code``."""
    err.print(Text.assemble(("error", "red"), ": ", f"{option}: " if option else "", message))
    raise typer.Exit(code)


def validation_lines(model: type[pydantic.BaseModel], exc: pydantic.ValidationError) -> list[str]:
    """One line per invalid field: the option, the value given and what is expected (range before step)."""
    lines: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(p) for p in error["loc"] if not isinstance(p, int)]
        field = loc[0] if loc else ""
        if field in lines:
            continue
        value = error.get("input")
        message = _range_message(model, field, value) or error["msg"].removeprefix("Value error, ")
        option = option_for(field) if field in model.model_fields else "request"
        shown = f" {value}" if field in model.model_fields and not isinstance(value, dict) else ""
        lines[field] = f"{option}{shown}: {message[:1].lower()}{message[1:]}"
    return list(lines.values())


def _range_message(model: type[pydantic.BaseModel], field: str, value: Any) -> str | None:
    """'must be at least 64' when a number is out of its range, whatever constraint pydantic reported first."""
    info = model.model_fields.get(field)
    if info is None or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    low = next((m.ge for m in info.metadata if isinstance(m, annotated_types.Ge)), None)
    high = next((m.le for m in info.metadata if isinstance(m, annotated_types.Le)), None)
    step = next((m.multiple_of for m in info.metadata if isinstance(m, annotated_types.MultipleOf)), None)
    if low is not None and value < low:  # type: ignore[operator]
        return f"must be at least {low}" + (f" (a multiple of {step} up to {high})" if step else "")
    if high is not None and value > high:  # type: ignore[operator]
        return f"must be at most {high}"
    if step is not None and value % step:  # type: ignore[operator]
        return f"must be a multiple of {step} (from {low} to {high})"
    return None


def existing_file(option: str, value: str | Path) -> Path:
    """``value`` as a readable file, or one line naming the option and 'file not found'."""
    path = Path(value).expanduser()
    if str(value) == "-":
        return path
    if not path.exists():
        fail(option, f"{value}: file not found")
    if not path.is_file():
        fail(option, f"{value}: not a file")
    return path
