"""Rewrite the generated tables of docs/privacy.md from the protocol tables in the code.

    python scripts/privacy_tables.py

The tables come from :mod:`ppir_itk.disclosure` (the session's) and each backend
module's ``TABLE``; ``tests/test_disclosure.py`` fails while the page differs.
"""

from pathlib import Path

from ppir_itk.backends import protocol_tables
from ppir_itk.disclosure import markdown, rewrite

PAGE = Path(__file__).resolve().parent.parent / "docs" / "privacy.md"


def main() -> None:
    PAGE.write_text(rewrite(PAGE, markdown(protocol_tables())))


if __name__ == "__main__":
    main()
