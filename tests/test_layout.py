"""The architecture's rules, checked on the installed package: a small core that imports no method, and two
methods (llmdoctor/, taro/) that share the core but never import each other (DESIGN.md, Layout)."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import fastdoctor

PACKAGE = pathlib.Path(fastdoctor.__file__).resolve().parent
METHODS = ("llmdoctor", "taro")
OUTSIDE_CORE = (*METHODS, "cli", "datasets")


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path) -> set[str]:
    """Every fastdoctor module that `path` imports, at any depth (lazy imports in functions included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # `from . import taro`
    return {m for m in found if m == "fastdoctor" or m.startswith("fastdoctor.")}


def part_of(module: str) -> str:
    """'core', or the top-level subpackage the module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in OUTSIDE_CORE else "core"


def test_the_module_walk_sees_relative_and_lazy_imports(tmp_path):
    # The rule below is only as good as this walk: a relative import two levels up, inside a function.
    probe = PACKAGE / "taro" / "router.py"
    assert "fastdoctor.ops" in imported_modules(probe) and "fastdoctor.sampling" in imported_modules(probe)
    assert "fastdoctor.llmdoctor.tfpo" in imported_modules(PACKAGE / "cli" / "llmdoctor.py")


def test_core_imports_no_method_and_methods_never_import_each_other():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    broken = []
    for path in files:
        source = part_of(module_name(path))
        for target in imported_modules(path):
            dest = part_of(target)
            if source == "core" and dest in OUTSIDE_CORE:
                broken.append(f"{module_name(path)} (core) imports {target}")
            if source in METHODS and dest in METHODS and dest != source:
                broken.append(f"{module_name(path)} ({source}) imports {target}")
            if source in METHODS and dest == "cli":
                broken.append(f"{module_name(path)} ({source}) imports the command line ({target})")
    assert not broken, "\n".join(broken)


def test_import_fastdoctor_loads_no_method_module():
    code = ("import sys, fastdoctor; print(sorted(m for m in sys.modules if m.startswith('fastdoctor.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = eval(out)  # a printed list of module names
    assert "fastdoctor.generate" in loaded and "fastdoctor.ops" in loaded
    outside = [m for m in loaded if part_of(m) != "core"]
    assert not outside, f"import fastdoctor loaded {outside}"


def test_no_python_file_does_two_jobs():
    # DESIGN.md: a file past about 400 lines is doing two jobs.
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, f"files over 420 lines: {long}"


def test_doctors_reach_the_kernels_from_generate_without_turning_back():
    """generate -> shared_base -> kernels: generate hands its doctors to shared_base alone (which plans, stacks
    and calls the kernels), and nothing shared_base uses imports generate or shared_base back."""
    imports = {m: imported_modules(PACKAGE / f"{m}.py") for m in ("generate", "shared_base", "adapters", "weights")}
    assert "fastdoctor.shared_base" in imports["generate"]
    assert not {"fastdoctor.adapters", "fastdoctor.weights"} & imports["generate"]
    assert {"fastdoctor._C", "fastdoctor.adapters", "fastdoctor.weights"} <= imports["shared_base"]
    for below in ("adapters", "weights"):
        assert not {"fastdoctor.generate", "fastdoctor.shared_base"} & imports[below], below


def test_library_code_never_exits_the_process():
    """Refusals are exceptions; only the command line turns them into messages and exit codes."""
    exits = []
    for path in PACKAGE.rglob("*.py"):
        if part_of(module_name(path)) == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and "SystemExit" in ast.unparse(node):
                exits.append(f"{module_name(path)}:{node.lineno}")
    assert not exits, exits


def test_the_commands_do_not_import_each_other():
    for path in (PACKAGE / "cli").glob("*.py"):
        if path.stem not in ("main", "__main__", "__init__"):
            assert "fastdoctor.cli.main" not in imported_modules(path), path.name


def test_one_helper_writes_and_checks_the_vocabulary_record():
    users = [module_name(p) for p in PACKAGE.rglob("*.py") if p.name != "tokens.py" and
             "vocab_fingerprint" in p.read_text()]
    assert not users, f"write vocab_record(tokenizer) and check with check_vocab(...), not by hand: {users}"


def test_methods_never_import_the_bundled_data_scripts_and_nothing_runs_on_the_oracles():
    """datasets/ holds the bundled files and the scripts that made them (which import the methods): the methods
    find bundled files through the core (fastdoctor.doctors, llmdoctor.data's paths). reference.py holds the test
    oracles: only tests and benchmarks import it."""
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source, name = part_of(module_name(path)), module_name(path)
        for target in imported_modules(path):
            if source in METHODS and part_of(target) == "datasets":
                broken.append(f"{name} imports {target}")
            if target == "fastdoctor.reference" and name != "fastdoctor.reference" and source != "datasets":
                broken.append(f"{name} imports the oracles")
    assert not broken, "\n".join(broken)
