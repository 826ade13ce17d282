"""Reading YAML files so that errors can name the line of a bad field.

Device profiles and gateway configs are both YAML written by people; both
report mistakes as `file:line: field a.b.c: what is wrong`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from campus.errors import ConfigError


class YamlDoc:
    """Parsed YAML data plus the node tree that remembers source lines."""

    def __init__(self, text: str, source: str, error: type[ConfigError] = ConfigError) -> None:
        self.source = source
        self.error = error
        try:
            self.node = yaml.compose(text)
            self.data: Any = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise error(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        except RecursionError:
            raise error(f"{source}: nested too deeply") from None
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # PyYAML's constructors raise these for values like `2001-02-30` or `!!bool maybe`.
            raise error(f"{source}: a value cannot be read ({type(exc).__name__}: {str(exc)[:120]})") from None

    @classmethod
    def read(cls, path: str | Path, error: type[ConfigError] = ConfigError) -> YamlDoc:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise error(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None
        return cls(text, str(path), error)

    def line_of(self, path: list[str | int] | tuple[str | int, ...]) -> int | None:
        """1-based line of the value at `path`, or of its nearest parent that exists."""
        node = best = self.node
        for key in path:
            if isinstance(node, yaml.MappingNode):
                node = next((v for k, v in node.value if k.value == str(key)), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
            else:
                node = None
            if node is None:
                break
            best = node
        return best.start_mark.line + 1 if best is not None else None

    def fail(self, path: list[str | int] | tuple[str | int, ...], message: str) -> ConfigError:
        """The error to raise for a bad value at `path`."""
        field = ".".join(str(p) for p in path) or "(top level)"
        line = self.line_of(path)
        where = f"{self.source}:{line}" if line else self.source
        return self.error(f"{where}: field {field}: {message}")
