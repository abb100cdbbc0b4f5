"""The docs as a reader meets them: the README's first commands, every link and anchor resolving, every guide
one click from the README, the configuration reference in step with the code."""

import re
from pathlib import Path

from ray_jobs.cli import all_config_references
from tests.support.paths import REPO

README = REPO / "README.md"
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [README, REPO / "cluster" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (word characters, spaces and
    hyphens kept), spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))  # no headings inside code blocks
    found, seen = set(), {}
    for heading in re.findall(r"(?m)^#{1,6} (.+?)\s*$", text):
        base = github_anchor(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")  # GitHub numbers repeated headings
        seen[base] = n + 1
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # code spans are not links
    return [a or b for a, b in LINK.findall(text)]


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in links(path):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.is_file() and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading with that anchor)")
    return broken


def test_readme_opens_with_the_two_commands_and_is_a_front_door():
    readme = README.read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "bash scripts/demo.sh" in first_block and "bash scripts/test.sh" in first_block
    assert len(readme.encode()) <= 12_000, f"README.md is {len(readme.encode()):,} bytes; keep it a front door"


def test_every_link_and_anchor_in_the_docs_resolves():
    broken = {str(p.relative_to(REPO)): bad for p in markdown_files() if (bad := broken_links(p))}
    assert not broken, broken


def test_every_guide_and_results_page_is_one_click_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README)}
    pages = [*sorted((REPO / "docs" / "guides").glob("*.md")), *sorted((REPO / "docs" / "results").glob("*.md"))]
    assert pages and not [str(p.relative_to(REPO)) for p in pages if p.resolve() not in linked]


def test_the_configuration_reference_is_in_step_with_the_code():
    reference = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert all_config_references() in reference, "run `xdr config-reference` and paste it into docs/configuration.md"


def test_the_anchor_rule_matches_githubs_on_headings_with_code_and_punctuation():
    assert github_anchor("Indexing job (`xdr index`, `ray_jobs.index_corpus`)") == \
        "indexing-job-xdr-index-ray_jobsindex_corpus"
    assert github_anchor("Capacity × hybrid ratio α, CPU-sized (2026-11-30)") == \
        "capacity--hybrid-ratio-α-cpu-sized-2026-11-30"


def test_ci_runs_the_readme_test_command():
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
