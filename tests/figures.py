"""Figures that tests measure and report (security and fault scenarios): printed where they
are made, and again together at the end of the run, so they are read even when pytest
captures output."""

FIGURES: list[str] = []


def figure(line: str) -> None:
    FIGURES.append(line)
    print(line)
