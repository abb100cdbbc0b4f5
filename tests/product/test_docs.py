from ray_jobs.cli import all_config_references
from tests.support.paths import REPO


def test_readme_opens_with_the_two_commands_and_carries_the_current_config_reference():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "bash scripts/demo.sh" in first_block and "bash scripts/test.sh" in first_block
    assert all_config_references() in readme, "run `xdr config-reference` and paste it into README.md"


def test_ci_runs_the_readme_test_command():
    assert "scripts/test.sh" in (REPO / ".ci" / "run").read_text()
