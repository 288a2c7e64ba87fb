"""pytest set-up for ernie-otel's tests.

Fixtures and hooks live in the plugin tests/plugins/ernie_pipeline.py (registered below); plain
helper functions in tests/helpers.py and the other helper modules next to it, imported like any
module. pytest puts this directory on sys.path (rootdir conftest, "prepend" import mode), which is
what makes both importable.
"""

pytest_plugins = ["plugins.ernie_pipeline"]
