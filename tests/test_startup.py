"""Importing medres and MONAI does not compile rfc3987_syntax's grammar, and jsonschema's IRI format
checks still give the real module's answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IRIS = ["http://example.org/a b", "http://example.org/ä", "urn:isbn:0451450523", "::", "relative/path"]


def _run(code: str) -> dict:
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.splitlines()[-1])


@pytest.mark.slow
def test_monai_import_leaves_the_iri_grammar_for_its_first_use():
    pytest.importorskip("rfc3987_syntax")
    pytest.importorskip("jsonschema")
    check = (
        "from jsonschema import Draft202012Validator as V, FormatChecker as F; "
        f"answers = [[V({{'format': f}}, format_checker=F()).is_valid(s) for f in ('iri', 'iri-reference')] "
        f"for s in {IRIS!r}]; "
    )
    ours = _run("import sys, medres.data.readers.io, monai; "
                "before = 'rfc3987_syntax' in sys.modules and 'jsonschema._format' in sys.modules; "
                + check + "import json; print(json.dumps({'loaded_before': before, 'answers': answers, "
                "'jsonschema': 'jsonschema._format' in sys.modules}))")
    plain = _run(check + "import json; print(json.dumps({'answers': answers}))")
    assert ours["jsonschema"] and not ours["loaded_before"]  # monai imported jsonschema, not the grammar
    assert ours["answers"] == plain["answers"]
    assert [a[0] for a in plain["answers"]] != [True] * len(IRIS)  # the checker does reject something
