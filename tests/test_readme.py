"""The README says what the code does."""

from __future__ import annotations

from pathlib import Path

from core.settings import settings_reference

README = Path(__file__).resolve().parent.parent / "README.md"


def test_configuration_reference_in_readme_matches_the_settings_class() -> None:
    text = README.read_text()
    start = text.index("<!-- settings:start -->\n") + len("<!-- settings:start -->\n")
    end = text.index("<!-- settings:end -->")
    assert text[start:end] == settings_reference(), "run `stillroom settings` into the README"
