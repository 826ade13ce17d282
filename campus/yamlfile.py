"""Reading YAML files so that errors can name the line of a bad field.

Device profiles and gateway configs are both YAML written by people; both
report mistakes as `file:line: field a.b.c: what is wrong`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from campus.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader whose constructors fail only with a YAML error that knows the line.

    PyYAML's constructors raise bare Python errors for some values: an empty tagged
    scalar (`!!float`, `!!int` give IndexError, `!!bool` KeyError, `!!timestamp`
    AttributeError), `2001-02-30` ValueError. Catching them here, per node, keeps
    the node's position, so the error still names the line.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - any constructor failure is a bad value
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this {node.tag.rsplit(':', 1)[-1]} value "
                f"({type(exc).__name__}: {str(exc)[:120]})", node.start_mark) from None


class YamlDoc:
    """Parsed YAML data plus the node tree that remembers source lines."""

    def __init__(self, text: str, source: str, error: type[ConfigError] = ConfigError) -> None:
        self.source = source
        self.error = error
        loader: _Loader | None = None
        try:
            loader = _Loader(text)  # the reader refuses control characters here already
            self.node = loader.get_single_node()
            self.data: Any = loader.construct_document(self.node) if self.node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise error(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
        except RecursionError:
            raise error(f"{source}: nested too deeply") from None
        finally:
            if loader is not None:
                loader.dispose()

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
