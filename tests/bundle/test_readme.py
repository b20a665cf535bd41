"""The bundle README: the model zoo's template sections, and commands written for the bundle folder (they are run, in
a copy of the bundle alone, by ``test_bundle_copy.py``)."""

from __future__ import annotations

import re

from .conftest import BUNDLE

README = BUNDLE / "docs" / "README.md"
_BLOCK = re.compile(r"(<!-- readme-test: skip[^>]*-->\s*)?```bash\n(.*?)```", re.S)
TEMPLATE_SECTIONS = ("### **Authors**", "### **Tags**", "## **Model Description**", "## **Data**",
                     "## **Performance**", "## **Additional Usage Steps**", "## **System Configuration**",
                     "## **Limitations**", "## **Citation Info**", "## **References**")


def readme_commands(skipped: bool = False) -> list[str]:
    """Commands of every ```bash block not marked ``<!-- readme-test: skip (...) -->`` (with ``skipped``: of the
    marked ones), in order."""
    cmds = []
    for skip, body in _BLOCK.findall(README.read_text()):
        if bool(skip) == skipped:
            cmds += [line for line in body.splitlines() if line.strip() and not line.startswith("#")]
    return cmds


def test_readme_has_the_zoo_template_sections_in_order():
    """docs/readme_template.md of the model zoo: Authors, Tags, Model Description, Data, Performance, Additional
    Usage Steps, System Configuration, Limitations, Citation Info, References."""
    text = README.read_text()
    pos = [text.find(s) for s in TEMPLATE_SECTIONS]
    assert all(p >= 0 for p in pos), [s for s, p in zip(TEMPLATE_SECTIONS, pos) if p < 0]
    assert pos == sorted(pos)


def test_readme_commands_run_from_the_bundle_folder():
    """Commands are single lines for the bundle folder: relative paths, no repository layout (``bundles/``,
    ``.venv``, ``../``), outputs under ``eval/``."""
    cmds = readme_commands()
    assert len(cmds) >= 6
    for c in readme_commands() + readme_commands(skipped=True):
        assert "bundles/" not in c and ".venv" not in c and "../" not in c, c
        if "--output_dir" in c:
            assert re.search(r"--output_dir eval(/|\s|$)", c), c
        if "--filepath" in c and "ckpt_export" in c:
            assert "--filepath eval/" in c, c
