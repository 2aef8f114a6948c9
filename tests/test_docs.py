"""The README is the entry point and docs/ the reference: a link between them that leads nowhere, or a make
target the README's table does not list, is what a new user meets first, and nothing else would notice."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", page.read_text(), re.M)}


def _local_links(page: Path) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", page.read_text()) if not re.match(r"[a-z]+:", t)]


def test_every_link_of_the_readme_and_docs_leads_to_a_file_and_heading_that_exist() -> None:
    broken = []
    for page in PAGES:
        for target in _local_links(page):
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in _local_links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_the_readme_lists_every_make_target_that_make_help_shows() -> None:
    targets = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.M)
    listed = set(re.findall(r"^\| `make ([a-z-]+)` \|", (ROOT / "README.md").read_text(), re.M))
    assert len(targets) >= 10
    assert sorted(set(targets) - listed) == []
    assert sorted(listed - set(targets)) == []


def test_the_anchor_rule_matches_githubs_for_headings_with_code_and_punctuation() -> None:
    assert _anchor("Real logs: `crowd load`") == "real-logs-crowd-load"
    assert _anchor("The next-day item task: Tianchi mobile, 2014") == "the-next-day-item-task-tianchi-mobile-2014"
    assert _anchor("`make setup`") == "make-setup"


def test_the_readme_and_the_cli_page_name_every_crowd_command() -> None:
    from ml.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    readme_cli = (ROOT / "README.md").read_text().split("## CLI", 1)[1].split("\n## ", 1)[0]
    for text in (readme_cli, (ROOT / "docs" / "cli.md").read_text()):
        named = set(re.findall(r"`([a-z-]+)`", text))
        assert sorted(commands - named) == []


def test_the_dbt_exposures_name_every_table_the_exports_read_and_the_crowds_read_the_forward_ones() -> None:
    """The lineage graph of dbt docs ends at the exposures: a table exported for the trainers or the crowds, or
    read by the crowds' outcomes, that no exposure names would look unused there."""
    import yaml

    from ml.crowd_outcomes import OUTCOME_TABLES
    from ml.warehouse.export import EXPORTS, FORWARD_EXPORTS

    exposures = {e["name"]: {re.fullmatch(r"ref\('(\w+)'\)", d).group(1) for d in e["depends_on"]}
                 for e in yaml.safe_load((ROOT / "dbt_project" / "models" / "exposures.yml").read_text())["exposures"]}
    exported = {name: table.split(".")[1] for name, (table, _) in EXPORTS.items()}
    outcomes = exposures.pop("crowd_outcomes")
    assert outcomes == {t.split(".")[1] for t in OUTCOME_TABLES}
    assert set().union(*exposures.values()) == set(exported.values())
    assert exposures["forward_crowds"] == {exported[name] for name in FORWARD_EXPORTS}
    assert exposures["model_training"] == {t for name, t in exported.items() if name != "forward"}
