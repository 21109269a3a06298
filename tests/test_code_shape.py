"""The codebase stays readable as it grows: short functions, short files, one home for privacy-critical literals."""
import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxpetct"
MAX_FUNCTION_LINES = 60
MAX_FILE_LINES = 400
CONFIG_BUILDERS = {("config.py", "base_config"), ("config.py", "paper_config")}  # config as code: one long list


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def test_no_function_over_60_lines_and_no_file_over_400():
    long_functions, long_files = [], []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(PACKAGE)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and (str(path.relative_to(PACKAGE)), node.name) not in CONFIG_BUILDERS:
                    long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {lines} lines")
    assert not long_functions and not long_files, long_functions + long_files


def test_the_demo_salt_is_written_once():
    """The public salt of synthetic cohorts lives in studies/deid.py only; every entry point resolves through it."""
    from jaxpetct.studies.deid import DEMO_SALT

    homes = [str(p.relative_to(PACKAGE)) for p in _sources() if DEMO_SALT in p.read_text(encoding="utf-8")]
    assert homes == ["studies/deid.py"], homes
    assert (PACKAGE / "studies" / "deid.py").read_text(encoding="utf-8").count(f'"{DEMO_SALT}"') == 1
