"""The tool registry, the plugin manifest, the generated plugin schemas and the docs agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from memory_palace.tools import TOOLS

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_lists_every_registry_tool() -> None:
    manifest = json.loads((ROOT / "openclaw.plugin.json").read_text())
    expected = {t.openclaw_name or t.name for t in TOOLS} | {"memory_search"}
    assert set(manifest["contracts"]["tools"]) == expected
    assert manifest["id"] == "memory-palace" and manifest["kind"] == "memory"
    assert manifest["configSchema"]["additionalProperties"] is False


def test_generated_plugin_schemas_are_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-tool-schemas"), "--check"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_and_docs_name_every_tool_and_plugin_key() -> None:
    readme = (ROOT / "README.md").read_text()
    for tool in TOOLS:
        assert f"`{tool.name}`" in readme, tool.name
    guide = (ROOT / "docs" / "openclaw.md").read_text()
    manifest = json.loads((ROOT / "openclaw.plugin.json").read_text())
    for key in manifest["configSchema"]["properties"]:
        assert key in guide, key


def test_every_tool_param_is_described_and_takes_database() -> None:
    for tool in TOOLS:
        for name, schema in tool.params.items():
            assert schema.get("description"), f"{tool.name}.{name}"
        if tool.extension is None:
            assert "database" in tool.params, tool.name
