"""The import rules of docs/architecture.md, checked on the source (static: every import statement,
including those inside functions, counts), plus the names-in-one-place rule for metric names and
default ports."""

from __future__ import annotations

import ast
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ernie_otel import names, ports

PACKAGE = Path(__file__).resolve().parent.parent / "ernie_otel"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield module_name(path), ast.parse(path.read_text(), filename=str(path))


def imports(mod: str, tree: ast.Module, *, top_level_only: bool = False) -> set[str]:
    """Absolute names of everything the module imports (``from .x import y`` -> ``ernie_otel.x``
    and ``ernie_otel.x.y``, as y may be a submodule)."""
    is_package = mod.count(".") == 0 or (PACKAGE / Path(*mod.split(".")[1:]) / "__init__.py").exists()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_package else mod.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            out.add(prefix)
            out.update(f"{prefix}.{alias.name}" for alias in node.names)
    return out


def reaches(imported: set[str], *targets: str) -> list[str]:
    return sorted(name for name in imported for t in targets if name == t or name.startswith(t + "."))


ALL = dict(modules())


@pytest.mark.parametrize("mod", ["ernie_otel.kinds", "ernie_otel.ports", "ernie_otel.config", "ernie_otel.stats",
                                 "ernie_otel.protocol", "ernie_otel.engine"])
def test_core_modules_import_no_opentelemetry(mod: str) -> None:
    assert not reaches(imports(mod, ALL[mod]), "opentelemetry", "ernie_otel.telemetry", "ernie_otel.names")


def test_only_the_engine_side_reaches_torch() -> None:
    allowed = {"ernie_otel.engine", "ernie_otel.backends.loading", "ernie_otel.backends.cpu_kernel",
               "ernie_otel.tiny_model"}
    offenders = {mod: reaches(imports(mod, tree), "torch", "transformers")
                 for mod, tree in ALL.items() if mod not in allowed}
    assert {m: r for m, r in offenders.items() if r} == {}
    # The engine itself only through the local backend, which make_backend imports on demand.
    engine_users = {mod for mod, tree in ALL.items() if reaches(imports(mod, tree), "ernie_otel.engine")}
    assert engine_users == {"ernie_otel.backends.local"}
    top = imports("ernie_otel.backends", ALL["ernie_otel.backends"], top_level_only=True)
    assert not reaches(top, "ernie_otel.backends.local")
    serve_top = imports("ernie_otel.serve", ALL["ernie_otel.serve"], top_level_only=True)
    assert not reaches(serve_top, "ernie_otel.server", "ernie_otel.backends.local")


def test_telemetry_never_imports_the_serving_side() -> None:
    for mod, tree in ALL.items():
        if mod.startswith("ernie_otel.telemetry"):
            assert not reaches(imports(mod, tree), "ernie_otel.engine", "ernie_otel.backends", "ernie_otel.server",
                               "ernie_otel.serve"), mod


def test_only_setup_builds_and_sets_sdk_providers() -> None:
    setters = set()
    for mod, tree in ALL.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in ("set_tracer_provider", "set_meter_provider",
                                                                 "set_logger_provider"):
                setters.add(mod)
    assert setters == {"ernie_otel.telemetry.setup"}


def test_private_sdk_span_classes_only_in_sdk_internals() -> None:
    users = {mod for mod, tree in ALL.items() if reaches(imports(mod, tree), "opentelemetry.sdk.trace")}
    # setup builds the providers (public SDK API); sdk_internals builds ReadableSpans directly.
    assert users <= {"ernie_otel.telemetry.setup", "ernie_otel.telemetry.sdk_internals"}
    assert "ernie_otel.telemetry.sdk_internals" in users


def test_private_sdk_metrics_classes_only_in_sdk_internals() -> None:
    users = {mod for mod, tree in ALL.items() if reaches(imports(mod, tree), "opentelemetry.sdk.metrics._internal")}
    assert users == {"ernie_otel.telemetry.sdk_internals"}  # the histogram fast path


def test_stack_imports_nothing_heavy_at_module_level() -> None:
    for mod, tree in ALL.items():
        if mod.startswith("ernie_otel.stack"):
            top = imports(mod, tree, top_level_only=True)
            assert not reaches(top, "opentelemetry", "torch", "transformers", "ernie_otel.names",
                               "ernie_otel.telemetry"), mod


def _literals(tree: ast.Module) -> Iterator[object]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant):
            yield node.value


def test_metric_names_and_ports_are_written_in_one_place() -> None:
    metric_names = {spec.otel_name for spec in vars(names).values() if isinstance(spec, names.MetricSpec)}
    metric_names |= {spec.prom_name for spec in vars(names).values() if isinstance(spec, names.MetricSpec)}
    port_numbers = set(ports.DEFAULT_PORTS.values()) | set(ports.FLEET_PORTS.values())
    found: dict[str, list[object]] = {}
    for mod, tree in ALL.items():
        if mod in ("ernie_otel.names", "ernie_otel.ports"):
            continue
        hits = [v for v in _literals(tree)
                if (isinstance(v, str) and v in metric_names)
                or (isinstance(v, int) and not isinstance(v, bool) and v in port_numbers)]
        if hits:
            found[mod] = hits
    assert found == {}


def test_the_repository_names_no_file_outside_it() -> None:
    """The repository explains itself: no pointer to a brief that lives outside it (built from parts
    here so this file does not name it either), and vendored artefacts only by a set-up path."""
    root = PACKAGE.parent
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    brief = re.compile("DESIGN" + r"\.md|\bhabit \d")
    outside = re.compile(r"\.\./" + "shared")
    setup_files = {"Makefile", ".ci/run", "scripts/setup.sh"}
    bad = []
    for name in files:
        path = root / name
        if not path.is_file() or path.suffix in (".png", ".gz", ".whl"):
            continue
        text = path.read_text(errors="replace")
        if brief.search(text) or (name not in setup_files and outside.search(text)):
            bad.append(name)
    assert bad == []
