"""Where the contract files live: inside the installed package, or beside it in a checkout.

``sql/`` and ``schemas/`` stay at the top of the repository (contracts are files a
reader finds first); a wheel carries copies under ``pipeline/_contracts/`` (see
``setup.py``). An editable install or a checkout reads the repository's own.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
_BUNDLED = _PACKAGE / "_contracts"
_CHECKOUT = _PACKAGE.parent


def contract_dir(name: str) -> Path:
    """The ``sql`` or ``schemas`` directory this installation uses."""
    bundled = _BUNDLED / name
    return bundled if bundled.is_dir() else _CHECKOUT / name
