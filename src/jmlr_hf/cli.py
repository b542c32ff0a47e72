"""The ``jmlr`` command (filled in by the CLI issue)."""


def main() -> None:  # pragma: no cover - placeholder until the CLI lands
    raise SystemExit("jmlr: no commands yet")
