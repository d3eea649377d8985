"""The documentation stands on its own: every relative link of README.md and docs/*.md
resolves (file and anchor), no file of the repository refers to a document that is not
in it, and the figures' script draws what the code computes."""
import os
import re
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
THIS = Path(__file__).resolve()
SKIP_DIRS = {".git", ".venv", "venv", "data", "runs", "visualize", "__pycache__",
             ".pytest_cache", ".hypothesis", "build", "dist",
             ".venv-gpubox", "wheels"}  # scripts/rehearse_gpu_box.sh's venv, gpu_box_wheels.sh's wheels
TEXT_SUFFIXES = {".py", ".md", ".txt", ".yaml", ".yml", ".toml", ".cfg", ".ini", ".sh", ".json",
                 ".csv", ""}
FIGURE_LIMIT = 200 * 1024  # committed figures stay small


# --------------------------------------------------------------------------- markdown links
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INDENTED_CODE = re.compile(r"(?:^(?: {4}|\t).*\n?)+", re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def strip_code(text):
    """Markdown without code blocks and code spans (links inside code are not links)."""
    text = FENCE.sub("", text)
    text = INDENTED_CODE.sub("\n", text)
    return INLINE_CODE.sub("", text)


def slug(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (letters,
    digits, spaces, hyphens and underscores kept), spaces -> hyphens."""
    text = re.sub(r"[`*]", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    out = []
    for ch in text.strip().lower():
        if ch in " -_" or unicodedata.category(ch)[0] in "LN":
            out.append("-" if ch == " " else ch)
    return "".join(out)


def anchors(path):
    """All anchors of a markdown file (duplicate headings get -1, -2, ... as on GitHub)."""
    text = Path(path).read_text(encoding="utf-8")
    found, seen = set(HTML_ANCHOR.findall(text)), {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        found.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return found


def broken_links(md_file):
    """[(target, why)] for each relative link of md_file that does not resolve."""
    md_file = Path(md_file)
    problems = []
    for target in LINK.findall(strip_code(md_file.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (md_file.parent / path_part).resolve() if path_part else md_file.resolve()
        if not dest.exists():
            problems.append((target, "no such file"))
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append((target, f"no heading with anchor #{anchor} in {dest.name}"))
        elif anchor and dest.suffix != ".md":
            problems.append((target, "anchor into a file that is not markdown"))
    return problems


def markdown_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def test_every_relative_link_resolves():
    files = markdown_files()
    assert len(files) >= 5, files  # README + method, databases, decisions, results, ...
    problems = [f"{f.relative_to(ROOT)}: ({t}) {why}" for f in files for t, why in broken_links(f)]
    assert not problems, "\n".join(problems)


def test_link_checker_finds_broken_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("# The `NSS` targets (108)\n\n## Gamma: marginals\n"
                                           "## Gamma: marginals\n")
    (tmp_path / "fig.png").write_bytes(b"\x89PNG")
    (tmp_path / "a.md").write_text(
        "[ok](sub/b.md) [ok](sub/b.md#the-nss-targets-108) [ok](sub/b.md#gamma-marginals-1)\n"
        "![ok](fig.png) [web](https://example.org/x.md) [self](#top-heading)\n"
        "# Top heading\n"
        "[bad file](missing.md) [bad anchor](sub/b.md#gamma) [bad fig](figs/none.png)\n"
        "`[code](not-a-link.md)`\n\n    [indented](code-block.md)\n"
        "```\n[fenced](fenced.md)\n```\n")
    assert sorted(t for t, _ in broken_links(tmp_path / "a.md")) == [
        "figs/none.png", "missing.md", "sub/b.md#gamma"]
    assert anchors(tmp_path / "sub" / "b.md") == {"the-nss-targets-108", "gamma-marginals",
                                                   "gamma-marginals-1"}


# --------------------------------------------------------------------------- references to documents
# A reference to a document: the project's former specification ("SPEC section 3",
# "SPEC step 7", "SPEC.md") or style guide, any path into ../shared except data files under
# shared/reference/ (real metadata that tests may read), and a path to a document that
# does not exist in the repository: a docs/*.md (or docs/*.md#anchor), or a .md file named
# like a document (upper-case stem: README.md, NOTES.md). Lower-case .md names outside docs/
# are files the project writes (matrix.md, gpu_check.md), not references.
SPEC_WORD = re.compile(r"\bSPEC\b|\bSTYLE\.md\b")
SHARED_PATH = re.compile(r"(?:\.\./|/)shared/[\w./-]*")
MD_PATH = re.compile(r"(?<![\w/.-])((?:\.\./|\./)*[\w.-]+(?:/[\w.-]+)*\.md)(#[\w-]+)?")


def repository_files(root):
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder) / name
            if path.suffix in TEXT_SUFFIXES and path.resolve() != THIS:
                yield path


def dangling_references(root, text_of=None):
    """[(file, line number, what)] for every reference to a document that is not in `root`."""
    root = Path(root).resolve()
    out = []
    for path in repository_files(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        rel = path.relative_to(root)
        for number, line in enumerate(text.splitlines(), 1):
            for m in SPEC_WORD.finditer(line):
                out.append((str(rel), number, m.group(0)))
            for m in SHARED_PATH.finditer(line):
                ref = m.group(0)
                if "shared/reference/" in ref and not ref.endswith(".md"):
                    continue  # real metadata used as data, not a document
                out.append((str(rel), number, ref))
            for m in MD_PATH.finditer(line):
                target, anchor = m.group(1), (m.group(2) or "")[1:]
                if "shared/" in target:
                    continue  # reported above
                candidates = [(path.parent / target).resolve(), (root / target).resolve()]
                inside = [c for c in candidates if c.is_relative_to(root) and c.is_file()]
                is_document = "docs/" in target or Path(target).stem.isupper()
                if not inside and is_document:
                    out.append((str(rel), number, target))
                elif anchor and anchor not in anchors(inside[0]):
                    out.append((str(rel), number, f"{target}#{anchor}"))
    return out


def test_reference_scanner_finds_dangling_references(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "method.md").write_text("# Method\n## The NSS targets\n")
    (tmp_path / "README.md").write_text("see docs/method.md and [x](docs/method.md#method)\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(
        '"""The targets of SPEC section 1."""\n'
        'META = ROOT / "../shared/reference/database_metadata/live3d_phase1_data.mat"\n'
        '# see ../shared/SPEC.md\n'
        '# see docs/method.md#the-nss-targets and docs/method.md#gamma\n'
        '# see NOTES.md, and spec_section is a word, SPECIAL is another\n'
        '# writes OUT_DIR/matrix.md and docs/missing.md is gone\n')
    found = sorted((f, n, w) for f, n, w in dangling_references(tmp_path))
    assert found == [
        (os.path.join("pkg", "a.py"), 1, "SPEC"),
        (os.path.join("pkg", "a.py"), 3, "../shared/SPEC.md"),
        (os.path.join("pkg", "a.py"), 3, "SPEC"),
        (os.path.join("pkg", "a.py"), 4, "docs/method.md#gamma"),
        (os.path.join("pkg", "a.py"), 5, "NOTES.md"),
        (os.path.join("pkg", "a.py"), 6, "docs/missing.md"),
    ]


def test_no_file_refers_to_a_document_outside_the_repository():
    found = dangling_references(ROOT)
    assert not found, "\n".join(f"{f}:{n}: {w}" for f, n, w in found)


# --------------------------------------------------------------------------- the paper's recipe
STALE_RECIPE_CLAIMS = ("had not learned", "not been seen to learn", "not seen to learn",
                       "recipe learns is open", "Not seen yet", "and then stays one")


def test_the_recipe_answer_is_told_once_the_same_way():
    """The README, decisions.md's section and the first log line of a run with the original
    normalisation give the same plateau (about 100 epochs on the demo) and point to the
    section; no page, README line or log note says the recipe was not seen to learn."""
    from siqa import config
    from siqa.training.notes import recipe_plateau_note

    section = (ROOT / "docs" / "decisions.md").read_text().split("## Does the paper's recipe learn?")[1]
    section = section.split("\n## ")[0]
    note = recipe_plateau_note(config.load_config(overrides=[
        "dataset.name=csv", "dataset.manifest=p.csv", "train.profile=paper"]))
    readme = (ROOT / "README.md").read_text()
    for text in (section, note, readme):
        assert "about 100 epochs" in text
    assert "docs/decisions.md#does-the-papers-recipe-learn" in note and "figures/paper_recipe.png" in section
    pages = [ROOT / "README.md", ROOT / "config.yaml", *sorted((ROOT / "docs").glob("*.md"))]
    code = [*sorted((ROOT / "siqa").rglob("*.py")), *sorted((ROOT / "benchmarks").glob("*.py")),
            *sorted((ROOT / "docs").glob("*.py")), *sorted(ROOT.glob("*.py"))]
    for path in pages + code:  # log lines and docstrings as well as pages
        text = " ".join(path.read_text().split())
        assert not [c for c in STALE_RECIPE_CLAIMS if c in text], path.relative_to(ROOT)
    assert not [c for c in STALE_RECIPE_CLAIMS if c in note]


# --------------------------------------------------------------------------- the figures
def _make_figures():
    return load_script("docs/make_figures.py")


def test_figures_exist_small_and_made_by_the_named_command():
    method = (ROOT / "docs" / "method.md").read_text()
    assert "python docs/make_figures.py" in method
    script = (ROOT / "docs" / "make_figures.py").read_text()
    for name in ("network.png", "dtcwt_subbands.png", "copula.png"):
        path = ROOT / "docs" / "figures" / name
        assert path.is_file() and f'"{name}"' in script, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size < FIGURE_LIMIT, (name, path.stat().st_size)
        assert f"figures/{name}" in method, name  # each figure is shown in the method page


def test_every_figure_a_page_shows_is_a_small_png_named_by_make_figures():
    """Each image the README or a docs page shows exists, is a PNG under FIGURE_LIMIT, and has
    its row in docs/README.md's list of figures: one docs/make_figures.py writes by name, or
    one whose row names the command that made it."""
    script = (ROOT / "docs" / "make_figures.py").read_text()
    rows = {line.split("](figures/")[1].split(")")[0]: line
            for line in (ROOT / "docs" / "README.md").read_text().splitlines() if "](figures/" in line}
    shown = set()
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+\.png)\)", page.read_text()):
            path = (page.parent / link).resolve()
            assert path.is_file(), (page.name, link)
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
            assert path.stat().st_size < FIGURE_LIMIT, (link, path.stat().st_size)
            row = rows.get(path.name, "")
            assert f'"{path.name}"' in script or "made by `python" in row, (path.name, row)
            shown.add(path.name)
    assert {"network.png", "paper_recipe.png", "demo_profiles.png"} <= shown, shown


def test_network_figure_shapes_are_the_models(one_torch_thread):
    """The shapes the diagram prints, recorded by hooks, against the layer table of
    docs/method.md worked out by hand (32 -> 16 -> 8 -> 4 by the three pools)."""
    shapes, params = _make_figures().network_taps()
    for side in "AB":
        x2, x4, out = shapes[f"{side}.out"]
        assert (x2, x4, out) == ((32, 8, 8), (64, 8, 8), (512,))
        assert shapes[f"{side}.pool"] == [(32, 16, 16), (32, 8, 8), (128, 4, 4)]
        assert shapes[f"{side}.fc_in"] == [(128 * 4 * 4,)]
    assert shapes["C.conv1_in"] == [(64, 8, 8)] and shapes["C.fc_in"] == [(2048,)]
    assert shapes["D.fc_in"] == [(128 * 8 * 8,)]
    assert shapes["fused"] == [(2048,)] and shapes["h1"] == [(1024,)] and shapes["nss"] == [(108,)]
    assert shapes["quality_fc2_in"] == [(2048,)] and shapes["quality_out"] == [(1,)]
    # parameter counts by hand: conv k*k*in*out + out, linear in*out + out
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    fc = lambda i, o: i * o + o  # noqa: E731
    column = conv(1, 32) + conv(32, 32) + conv(32, 64) + conv(64, 64) + conv(64, 128) + \
        fc(2048, 512) + fc(512, 512)
    assert params["A"] == params["B"] == column
    assert params["C"] == conv(64, 64) + conv(64, 128) + fc(2048, 512) + fc(512, 512)
    assert params["D"] == fc(8192, 512) + fc(512, 512)
    assert params["task 1"] == fc(2048, 1024) + fc(1024, 108)
    assert params["task 2"] == fc(2048, 1024) + fc(2048, 1024) + fc(1024, 1)
    assert params["total"] == 15_187_437 == sum(v for k, v in params.items() if k != "total")


def test_orientation_labels_match_gratings(one_torch_thread):
    """Each DT-CWT slice k responds most to stripes at the angle the docs give it: over
    gratings at every 5 degrees, the one that lights slice k most has its stripes within
    10 degrees of ORIENTATIONS[k] (counter-clockwise from horizontal, y axis up)."""
    from siqa.nss import dtcwt_forward

    labels = _make_figures().ORIENTATIONS
    rows, x = np.mgrid[0:96, 0:96].astype(np.float64)
    y = -rows  # image rows grow downwards; angles are counted with y up
    angles = np.arange(-85, 91, 5)
    energy = np.empty((len(angles), 6))
    for i, deg in enumerate(angles):
        wave = np.deg2rad(deg + 90.0)  # the wave vector is normal to the stripes
        image = np.cos(2 * np.pi * 0.3 * (x * np.cos(wave) + y * np.sin(wave)))
        _, highpasses = dtcwt_forward(image, 1)
        energy[i] = (np.abs(highpasses[0][8:-8, 8:-8, :]) ** 2).mean(axis=(0, 1))
    for k, label in enumerate(labels):
        best = angles[energy[:, k].argmax()]
        gap = abs((best - label + 90) % 180 - 90)  # stripe angles are defined modulo 180
        assert gap <= 10, (k, label, best)


def _fake_run(made_in, out_dir, tensorboard_dir, normalisation, seed, epochs, last):
    """A run folder made from `made_in` as train.py leaves it for the figure: config.yaml and
    `last` epochs of TensorBoard scalars (validation SROCC epoch / 1000, loss 30 - epoch)."""
    import yaml
    from torch.utils.tensorboard import SummaryWriter

    from siqa.training.logbook import tensorboard_name

    run = made_in / (out_dir or "runs/demo")
    run.mkdir(parents=True)
    cfg = {"out_dir": out_dir, "dataset": {"name": "demo"},
           "patches": {"normalisation": normalisation}, "train": {"seed": seed, "epochs": epochs},
           "tensorboard": {"dir": str(tensorboard_dir)}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with SummaryWriter(str(made_in / tensorboard_dir / tensorboard_name(run))) as writer:
        for epoch in range(1, last + 1):
            writer.add_scalar("val/srocc", epoch / 1000, epoch)
            writer.add_scalar("train/loss_quality", 30.0 - epoch, epoch)
    return run


def test_recipe_curves_read_each_run_from_the_folder_it_was_made_from(tmp_path, monkeypatch):
    """--recipe-runs: a relative tensorboard.dir is read from the folder the run was made
    from (the run folder less its relative out_dir, runs/<dataset> for out_dir null), from
    any working directory, also after the run and its TensorBoard folder were copied
    elsewhere (the folder name's hash is of the old path); an absolute one as it is. Runs
    made in two places and of different lengths go into one figure, each labelled with its
    normalisation, seed and epochs."""
    import shutil

    figures = _make_figures()
    shared, bg, elsewhere = tmp_path / "shared", tmp_path / "bg", tmp_path / "elsewhere"
    ref = _fake_run(shared, "runs/recipe/ref_s1", "runs/recipe/tb", "reference", 1, 50, 33)
    demo = _fake_run(bg, None, "runs/tb", "contrast", 0, 4, 4)
    absolute = _fake_run(bg, "runs/recipe/con_s0", tmp_path / "abs_tb", "contrast", 0, 50, 50)
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    curves, meta = figures.run_curves(os.path.relpath(ref))
    assert meta == ("reference", 1, 50)
    assert [e for e, _ in curves["val/srocc"]] == list(range(1, 34))
    assert curves["train/loss_quality"][-1] == (33, 30.0 - 33)
    assert figures.run_origin(ref, {"out_dir": "runs/recipe/ref_s1"}) == shared
    assert figures.run_origin(demo, {"out_dir": None, "dataset": {"name": "demo"}}) == bg
    assert figures.run_curves(absolute)[1] == ("contrast", 0, 50)
    copied = tmp_path / "copied"
    shutil.copytree(shared, copied)  # the hash in the TensorBoard folder's name is of shared/
    moved = copied / "runs/recipe/ref_s1"
    assert figures.run_curves(moved)[0]["val/srocc"] == curves["val/srocc"]
    (copied / "runs/recipe/tb/ref_s1-0123abcd").mkdir()  # two candidates: which is unknown
    with pytest.raises(ValueError, match="2 TensorBoard folders"):
        figures.run_curves(moved)
    recorded = tmp_path / "made"  # a run as runs are now: out_dir and tensorboard.dir absolute
    _fake_run(recorded, str(recorded / "runs/demo"), recorded / "visualize/tb", "contrast", 0, 40, 40)
    shutil.move(recorded, tmp_path / "kept")  # copied with its TensorBoard folder, the original gone
    kept = figures.run_curves(tmp_path / "kept/runs/demo")
    assert kept[1] == ("contrast", 0, 40) and len(kept[0]["val/srocc"]) == 40
    shutil.move(tmp_path / "kept/runs/demo", tmp_path / "kept/demo")  # no longer beside it
    with pytest.raises(ValueError, match="does not end in runs/demo"):
        figures.run_curves(tmp_path / "kept/demo")
    shutil.copytree(ref, shared / "renamed")  # out_dir is no longer the end of its path
    with pytest.raises(ValueError, match="is not the end of its path"):
        figures.run_curves(shared / "renamed")
    labels = figures.draw_recipe_curves(tmp_path / "recipe.png", [ref, absolute, demo])
    assert labels == ["reference, seed 1, 50 epochs (stopped after 33)",
                      "contrast, seed 0, 50 epochs", "contrast, seed 0, 4 epochs"]
    assert (tmp_path / "recipe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- README commands
def readme_commands():
    """The command lines of README.md's indented code blocks."""
    text = FENCE.sub("", (ROOT / "README.md").read_text(encoding="utf-8"))
    return [line.strip() for block in INDENTED_CODE.findall(text) for line in block.splitlines()
            if line.strip()]


def test_readme_commands_name_the_environments_python():
    """A fresh shell has no activated environment (its `python` may have no torch): every
    README command runs the Python of setup.sh's .venv, as the quick start does."""
    commands = readme_commands()
    assert len(commands) >= 10
    for line in commands:
        words = line.split()
        if any(w.endswith("python") or w.startswith("python3") for w in words[:1]):
            assert words[0] == ".venv/bin/python", line
        assert not line.startswith("python"), line


def test_readme_python_runs_from_a_shell_with_nothing_set():
    """`.venv/bin/python train.py --list-settings` from the checkout, with an environment that
    holds PATH only (no activation, no PYTHONPATH): the README's form of a command works."""
    import subprocess

    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        pytest.skip("no .venv in this checkout (installed into another environment)")
    proc = subprocess.run([".venv/bin/python", "train.py", "--list-settings"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "train.epochs" in proc.stdout


def test_readme_scores_files_the_quick_start_builds():
    """Every data/demo/ file a README command or snippet names is one the demo builder writes
    (siqa/data/demo.py: build_scene's names, the stereodemo scenes, the manifest)."""
    from siqa.data import demo

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"data/demo/[\w/.]+", text))
    assert named, "the README scores no demo file"
    scenes = {scene for scene, _, _ in demo.source_scenes(demo.source_dir())}
    levels = set(demo.SYMMETRIC_LEVELS) | {lv for pair in demo.ASYMMETRIC_LEVELS for lv in pair} - {0}
    for path in named:
        if path == "data/demo/manifest.csv":
            continue
        match = re.fullmatch(r"data/demo/(\w+)/(\w+)_(\d)_([lr])\.png", path)
        assert match, path
        kind, scene, level, _ = match.groups()
        assert kind in demo.TYPES and scene in scenes and int(level) in levels, path


def test_the_documentation_index_lists_every_page():
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert pages <= listed, sorted(pages - listed)
