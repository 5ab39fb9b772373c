"""The documents below run as tests: every command block and Python block, section by section,
with their output compared with the document (see ``mdrun`` for the rules, and the tutorial's
Conventions for what a reader needs to know). A new document is one more line in ``DOCS``."""

from __future__ import annotations

import os

import pytest
from mdrun import REPO, Section, needs_root, parse, run_section

from vxlanpy.netns import ensure_tools

DOCS = [
    "docs/tutorial.md",
    "docs/api.md",
    "docs/flannel.md",
]
# Debian packages a document's commands need beyond `make setup`'s venv (command -> package),
# installed with apt when missing, as the namespace tests do
TOOLS = {
    "flannel.md": {"etcd": "etcd-server", "etcdctl": "etcd-client"},
}

SECTIONS = [s for doc in DOCS for s in parse(REPO / doc)]


def _id(s: Section) -> str:
    return f"{s.path.name}:{s.line}:{s.title}"


@pytest.mark.parametrize("section", SECTIONS, ids=_id)
def test_doc_section(section: Section) -> None:
    if section.needs_shell and (why := needs_root()):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    ensure_tools(TOOLS.get(section.path.name, {}))
    failures = run_section(section)
    assert not failures, "\n\n".join(str(f) for f in failures)
