"""docs/claims.md stays honest: every seed paper has a row, every link and anchor resolves, and
every "test it at the paper's scale" command parses with the real argument parser."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = ROOT / "docs" / "claims.md"
PAPERS = ROOT / "docs" / "papers.md"
CHECKED = [CLAIMS, ROOT / "docs" / "results" / "theory.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")
VERDICTS = ("reproduced", "partly", "not reproduced at this scale", "not yet measured")


def _outside_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub makes for the page's headings (repeats get -1, -2, ...)."""
    seen: Counter[str] = Counter()
    anchors = set()
    for line in _outside_code(page.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def test_slug_matches_github_on_known_headings() -> None:
    # Oracle: the anchors GitHub renders for these headings of docs/results/*.md.
    assert _slug("FG-SGD vs SGD") == "fg-sgd-vs-sgd"
    assert _slug("Step cost: `cola_ud` (orthogonal) vs BAOAB at T = 0") == (
        "step-cost-cola_ud-orthogonal-vs-baoab-at-t--0"
    )
    assert _slug("A2Grad vs Adam and AMSGrad (the paper's grids)") == (
        "a2grad-vs-adam-and-amsgrad-the-papers-grids"
    )


@pytest.mark.parametrize("page", CHECKED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_anchors_resolve(page: Path) -> None:
    broken = []
    for target in LINK.findall(_outside_code(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path) if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no heading with this anchor)")
    assert not broken, f"broken links in {page.name}: {broken}"


def _paper_titles() -> list[str]:
    """The first *italic* title of every bullet of docs/papers.md (bullets span lines)."""
    bullets: list[str] = []
    for line in PAPERS.read_text().splitlines():
        if line.startswith("- "):
            bullets.append(line[2:])
        elif bullets and line.startswith("  "):
            bullets[-1] += " " + line.strip()
    titles = []
    for bullet in bullets:
        match = re.search(r"\*([^*]+)\*", bullet)
        assert match, f"no *title* in docs/papers.md bullet: {bullet}"
        titles.append(" ".join(match.group(1).split()))
    return titles


def _rows(heading: str) -> list[str]:
    """The body rows of the first table under ``## heading`` in docs/claims.md."""
    section = CLAIMS.read_text().split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    return [line for line in lines[1:] if not line.startswith("|---")]


def _verdict(row: str) -> str:
    text = row.split("|")[-3].strip().lower()
    # The longest matching prefix: "not reproduced ..." before "reproduced".
    return max((v for v in VERDICTS if text.startswith(v)), key=len, default="")


def _seed_rows() -> list[str]:
    return _rows("Seed papers")


def test_every_seed_paper_has_one_row_with_a_verdict() -> None:
    titles = _paper_titles()
    assert len(titles) >= 20, "docs/papers.md was not parsed"
    rows = _seed_rows()
    papers = [row.split("|")[1] for row in rows]
    missing = [t for t in titles if not any(t in paper for paper in papers)]
    assert not missing, f"seed papers without a row in docs/claims.md: {missing}"
    doubled = [t for t in titles if sum(t in paper for paper in papers) > 1]
    assert not doubled, f"seed papers with more than one row: {doubled}"
    for row in rows + _rows("Further methods from papers") + _rows("Landscape tools from papers"):
        assert _verdict(row), f"row without a verdict: {row[:80]}"


def test_verdict_counts_match_the_rows() -> None:
    counts = {row.split("|")[1].strip(): row for row in _rows("Verdict counts")}
    headings = ("Seed papers", "Further methods from papers", "Landscape tools from papers")
    for column, heading in enumerate(headings, start=2):
        verdicts = Counter(_verdict(row) for row in _rows(heading))
        for verdict in VERDICTS:
            stated = int(counts[verdict].split("|")[column])
            assert stated == verdicts[verdict], (heading, verdict, stated, verdicts[verdict])
        assert int(counts["total"].split("|")[column]) == len(_rows(heading))


def _commands() -> list[str]:
    """Every command line of the bash blocks of the paper-scale section."""
    section = CLAIMS.read_text().split("## To test at the paper's scale", 1)[1]
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        commands += [line.strip() for line in joined.splitlines() if line.strip()]
    return commands


class _Parsed(Exception):
    pass


def _parse_script(path: Path, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the script up to its argument parsing; SystemExit(2) on a bad flag or value."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *argv])
    monkeypatch.syspath_prepend(str(path.parent))
    with pytest.raises(_Parsed):
        runpy.run_path(str(path), run_name="__main__")


def test_the_command_check_rejects_a_bad_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    script = ROOT / "benchmarks" / "theory_figures.py"
    with pytest.raises(SystemExit):
        _parse_script(script, ["width", "--no-such-flag"], monkeypatch)
    _parse_script(script, ["width", "--seeds", "2"], monkeypatch)


def test_paper_scale_commands_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvalley import cli
    from torchvalley.bench.tasks import get_task

    commands = _commands()
    assert len(commands) >= 8, "the paper-scale section lost its commands"
    checked = 0
    for command in commands:
        words = shlex.split(command)
        if words[:3] == ["python", "-m", "torchvalley"]:
            args = cli._build_parser().parse_args(words[3:])
            for task in args.task:
                get_task(task)
            cli._parse_specs(args.optimizer)
            checked += 1
        elif words[0] == "python" and words[1].startswith("benchmarks/"):
            with monkeypatch.context() as patch:
                _parse_script(ROOT / words[1], words[2:], patch)
            checked += 1
        else:
            assert words[0] == "pip", f"unexpected command: {command}"
    assert checked >= 8
