"""``sparsegap --help``: every config group, its options, and every field with its default and
its comment, read from the schemas and the method declarations themselves (a field's comment is
the one on its line in its dataclass), so the help cannot drift from the code."""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import io
import textwrap
import tokenize
from functools import cache
from typing import Any

from sparsegap import config
from sparsegap.encoders import ENCODERS
from sparsegap.inference import INFERENCE
from sparsegap.scenarios import SCENARIOS

WIDTH = 100
COLUMN = 40  # where a field's comment starts

USAGE = """\
usage: sparsegap [GROUP=OPTION ...] [KEY=VALUE ...]        one run (python -m sparsegap, the same)
       sparsegap -m KEY=V1,V2 [KEY=V3,V4 ...]              a sweep: one run per combination
       sparsegap -m +experiment=NAME                        a paper preset (sweep)
       sparsegap --cfg job [...]                            print the composed config, run nothing
       sparsegap-report FOLDER                              tables and figures of runs

Runs write outputs/runs/<time>-<scenario>-<encoder>/ (sweeps: outputs/multirun/<time>/<job>/):
metrics.jsonl, summary.json, model.pt, and an offline W&B run. Invalid values stop before anything
runs with one `error:` line naming the key, the value and what is allowed (exit code 2).
"""


@cache
def field_comments(cls: type) -> dict[str, str]:
    """The comment of each field of dataclass ``cls`` and its bases: the comment(s) on the
    field's statement, or else the comment lines right above it."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source shipped: the field stays undocumented
            continue
        own = {f.name for f in dataclasses.fields(klass)}
        comments |= _comments_by_field(source, own)
    return comments


def _comments_by_field(source: str, names: set[str]) -> dict[str, str]:
    comment_at: dict[int, str] = {}  # line number → the comment on it
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comment_at[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    found: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if stripped.startswith("#") or ":" not in stripped:
            continue
        name = stripped.split(":", 1)[0].strip()
        if name not in names:
            continue
        end = number  # a statement may run over several lines (a long default in parentheses)
        while end < len(lines) and lines[end - 1].split("#")[0].rstrip().endswith(("(", ",")):
            end += 1
        trailing = [comment_at[n] for n in range(number, end + 1) if n in comment_at]
        above, n = [], number - 1
        while n in comment_at and lines[n - 1].strip().startswith("#"):
            above.insert(0, comment_at[n])
            n -= 1
        # A comment on the field's own line is its documentation; a block above documents the
        # field only when the line has none (a block above a commented field introduces a group).
        text = " ".join(trailing or above)
        if text:
            found[name] = text
    return found


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str) and value.startswith("${"):
        return f"{value} (from another key)"
    return value


def fields(cls: type, prefix: str, skip: frozenset[str] = frozenset()) -> list[str]:
    """``prefix.field = default   comment`` for every field of ``cls`` not in ``skip`` (nested
    dataclasses flattened), wrapped at ``WIDTH``."""
    out: list[str] = []
    comments = field_comments(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = _default(f)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(default):
            out += fields(type(default), f"{key}.")
            continue
        out += _entry(f"{key} = {default}", _with_range(comments.get(f.name, ""), f))
    return out


def _with_range(comment: str, f: dataclasses.Field) -> str:
    """The comment followed by the field's declared range (``config.ranged``), e.g. ``[>= 1]``."""
    bounds = f.metadata.get("range")
    if bounds is None:
        return comment
    below = (">=", bounds.ge) if bounds.ge is not None else (">", bounds.gt)
    above = ("<=", bounds.le) if bounds.le is not None else ("<", bounds.lt)
    parts = [f"{sign} {value}" for sign, value in (below, above) if value is not None]
    if not parts:
        return comment
    return f"{comment} [{', '.join(parts)}]".strip()


def _entry(head: str, text: str, indent: int = 2) -> list[str]:
    head = " " * indent + head
    if not text:
        return [head]
    if len(head) >= COLUMN - 1:
        first, body = [head], text
        return first + textwrap.wrap(
            body, WIDTH, initial_indent=" " * COLUMN, subsequent_indent=" " * COLUMN
        )
    wrapped = textwrap.wrap(text, WIDTH - COLUMN)
    out = [f"{head:<{COLUMN}}{wrapped[0]}"]
    out += [" " * COLUMN + line for line in wrapped[1:]]
    return out


def presets(group: str) -> list[tuple[str, str]]:
    """The YAML presets of ``group`` in ``conf/`` with the first line of their comment."""
    try:
        folder = importlib.resources.files("sparsegap.conf").joinpath(group)
        files = sorted(
            (f for f in folder.iterdir() if f.name.endswith(".yaml")), key=lambda f: f.name
        )
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for f in files:
        comment = []  # the file's opening comment, up to its first full stop
        for line in f.read_text().splitlines():
            if line.startswith("# @package"):
                continue
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("#").strip())
            if comment[-1].endswith((".", ":")):
                break
        text = " ".join(comment).rstrip(".:")
        if len(text) > 120:
            text = text[:117].rsplit(" ", 1)[0] + " …"
        out.append((f.name.removesuffix(".yaml"), text))
    return out


def _group(title: str, entries: list[tuple[str, str]]) -> list[str]:
    out = [title]
    for name, text in entries:
        out += _entry(name, text)
    return out


def render() -> str:
    """The whole help text."""
    base_encoder = frozenset(f.name for f in dataclasses.fields(config.EncoderConfig))
    lines = [USAGE]

    lines.append("Top-level keys (KEY=VALUE)")
    groups = frozenset({"data", "encoder", "scenario", "device", "logger", "metrics", "cache"})
    lines += fields(config.Config, "", groups)
    lines.append("")

    lines += _group(
        "scenario=NAME  what is known and what is learned (paper §3.5)",
        [(s.name, f"{s.steps:,} steps by default") for s in SCENARIOS.values()],
    )
    lines += fields(config.ScenarioConfig, "scenario.", frozenset({"name"}))
    lines.append("")

    lines.append("data=NAME  where X comes from")
    lines += _entry("default", "synthetic X = D·S + noise, the paper's regime (the default)")
    lines += _entry("lm", "activations of a language model (needs sparsegap[lm])")
    for name, text in presets("data"):
        lines += _entry(name, f"preset: {text}")
    lines.append("  data=default fields:")
    lines += fields(config.DataConfig, "data.", frozenset({"source"}))
    lines.append("  data=lm fields:")
    lines += fields(config.LMDataConfig, "data.", frozenset({"source"}))
    lines.append("")

    lines.append("encoder=NAME  how codes are inferred (label, kind, scenarios it applies to)")
    for name, cls in ENCODERS.items():
        where = ", ".join(cls.scenarios)
        lines += _entry(name, f"{cls.label} ({cls.kind}); {where}")
    for name, text in presets("encoder"):
        lines += _entry(name, f"preset: {text}")
    lines.append("  fields of every encoder:")
    lines += fields(config.EncoderConfig, "encoder.", frozenset({"name"}))
    by_config = {cls.config: name for name, cls in ENCODERS.items()}
    for name, cls in ENCODERS.items():
        # An encoder whose config extends another encoder's lists only what it adds.
        parent = next((c for c in cls.config.__mro__[1:] if c in by_config), None)
        inherited = {f.name for f in dataclasses.fields(parent)} if parent else set()
        skip = base_encoder | inherited | {"inference"}
        own = fields(cls.config, "encoder.", frozenset(skip - {"name"} | {"name"}))
        if own or parent:
            plus = f" (the fields of encoder={by_config[parent]}, and)" if parent else ""
            lines.append(f"  encoder={name}:{plus}")
            lines += own
    lines.append("  encoder.inference.* (sparse coding, SAE + ITO, dictionary learning):")
    names = ", ".join(f"{n} ({c.label})" for n, c in INFERENCE.items())
    lines += _entry("encoder.inference.name", f"one of {names}")
    lines += fields(config.InferenceConfig, "encoder.inference.", frozenset({"name"}))
    lines.append("")

    for group, cls, title in (
        ("device", config.DeviceConfig, "where it runs"),
        ("logger", config.LoggerConfig, "experiment tracking"),
    ):
        options = config.DEVICES if group == "device" else config.LOGGERS
        lines.append(f"{group}=NAME  {title}: {' | '.join(options)}")
        lines += fields(cls, f"{group}.", frozenset({"name"}))
        lines.append("")
    lines.append("metrics.*")
    lines += fields(config.MetricsConfig, "metrics.")
    lines.append("")
    lines.append("+cache=build  harvest data=lm activations to disk instead of training")
    lines += fields(config.CacheConfig, "cache.")
    lines.append("")
    lines += _group("+experiment=NAME  the paper's presets (use with -m)", presets("experiment"))
    lines += _group("+method=NAME  one method of the frontier presets", presets("method"))
    lines.append("")
    lines.append("Hydra's own options: sparsegap --hydra-help")
    return "\n".join(lines)
