"""The documentation cannot drift: the site builds in strict mode, and every example in it runs.

The examples are the fenced ```bash and ```python blocks of README.md and docs/**/*.md (snippets
that a page includes with `--8<-- "FILE"` count as part of it). The convention:

- Every ```bash and ```python block runs, in page order; the blocks of one page share a fresh
  temporary folder, so a later block may use what an earlier one wrote (`runs/knn`, `photos/`).
  A bash block runs under `set -eo pipefail`; a python block runs as a script of its own (give it
  its imports). Output, synopses with placeholders (DATA, MODEL) and file contents go in ```text,
  ```yaml, ```json or ```csv blocks, which never run.
- `<!-- skip: REASON -->` on the line before a block (an HTML comment, so readers never see it)
  leaves it out; the test reports it skipped with REASON. Skip only what cannot run here: the
  setup commands that CI runs itself, runs that take minutes (give a shortened example beside
  it), servers that run until stopped, other machines.
- `<!-- server: ARGS -->` before a block serves `imgcls serve ARGS` on a free port while the block
  runs (and for later blocks of the page that ask for the same ARGS); the block's `8000` (in
  `127.0.0.1:8000`) is replaced by that port.
- Each page's folder starts with `photo.jpg`, scikit-image's cat (imgcls's sample `chelsea.jpg`),
  and `recipes/` (the repository's).
  Data must ship offline: named datasets (`digits`, `fashion-mnist` from
  /usr/share/datasets/fashion-mnist), the sample photos in imgcls/data/samples, scikit-image's.
- The environment: `imgcls` on PATH, IMGCLS_CACHE, IMGCLS_DATA, IMGCLS_MODELS and HOME in a
  temporary folder of this test session, IMGCLS_PROGRESS=0 and IMGCLS_RUNTIME=torch (networks
  predict in PyTorch, as in the rest of the suite: the default would first export each one to
  ONNX, which tests/test_fast_inference.py tests on its own).

Speed: each `imgcls ...` runs in a fork of one process that imported imgcls once
(tests/forkserver.py), since the imports alone cost 5-15 s a command on a busy 2-core machine;
IMGCLS_DOCS_FORKSERVER=0 runs each as a real process instead.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = sorted((ROOT / "docs" / "snippets").glob("*.md"))     # included by pages, not pages of their own
PAGES = [ROOT / "README.md", *sorted(set((ROOT / "docs").rglob("*.md")) - set(SNIPPETS))]
RUN = {"bash", "python"}
NEVER_RUN = {"text", "yaml", "json", "csv", "html"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+)(?P<info>[^`]*)$")
DIRECTIVE = re.compile(r"^\s*<!-- (?P<name>skip|server): (?P<value>.+?) -->\s*$")
SNIPPET = re.compile(r'^(?P<indent>[ \t]*)--8<-- "(?P<path>[^":]+)(?::(?P<section>[a-z][-_0-9a-z]*))?"\s*$')
BLOCK_TIMEOUT = 300
SERVER_START = 180


@dataclass
class Block:
    page: Path                     # the page it runs on
    source: Path                   # the file it is written in: the page, or a snippet the page includes
    line: int                      # of the opening fence, 1-based, in source
    language: str
    code: str
    skip: str | None = None
    server: str | None = None

    @property
    def name(self) -> str:
        where = f"{self.source.relative_to(ROOT)}:{self.line}"
        return where if self.source == self.page else f"{self.page.relative_to(ROOT)}/{where}"


def expanded_lines(path: Path, section: str | None = None) -> list[tuple[str, Path, int]]:
    """The page's lines, with `--8<-- "FILE"` and `--8<-- "FILE:SECTION"` snippets inlined (as
    pymdownx.snippets inlines them): (line, file it comes from, line number)."""
    lines, inside = [], section is None
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if section is not None and f"--8<-- [start:{section}]" in text:
            inside = True
        elif section is not None and f"--8<-- [end:{section}]" in text:
            inside = False
        elif not inside:
            continue
        elif match := SNIPPET.match(text):
            lines += [(match["indent"] + line, source, n)
                      for line, source, n in expanded_lines(ROOT / match["path"], match["section"])]
        else:
            lines.append((text, path, number))
    return lines


def blocks_of(page: Path) -> list[Block]:
    """Every fenced block of a page (in order), with the directives on the lines before it."""
    lines = expanded_lines(page)
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i][0])
        if not opening:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0].lstrip("{.").rstrip("}")
        body, j = [], i + 1
        while j < len(lines) and lines[j][0].strip() != fence:
            body.append(lines[j][0][len(indent):] if lines[j][0].startswith(indent) else lines[j][0].lstrip())
            j += 1
        block = Block(page, lines[i][1], lines[i][2], language, "\n".join(body) + "\n")
        k = i - 1
        while k >= 0 and (directive := DIRECTIVE.match(lines[k][0])):
            setattr(block, directive["name"], directive["value"])
            k -= 1
        blocks.append(block)
        i = j + 1
    return blocks


ALL_BLOCKS = [block for page in PAGES for block in blocks_of(page)]
EXAMPLES = [block for block in ALL_BLOCKS if block.language in RUN]


# -- the strict build -------------------------------------------------------------------------
def test_site_builds_in_strict_mode(tmp_path):
    missing = [name for name in ("mkdocs", "material", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(name.split(".")[0]) is None]
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "commands" / "index.html").read_text().count("usage: imgcls") >= 19


# -- what the pages hold ----------------------------------------------------------------------
def test_every_block_says_whether_it_runs():
    """A fence without a language (or as `sh`, `console`) would escape the examples unseen."""
    unknown = [f"{b.name} ({b.language or 'no language'})" for b in ALL_BLOCKS if b.language not in RUN | NEVER_RUN]
    assert not unknown, "give these blocks bash or python (examples) or text (output): " + ", ".join(unknown)
    assert len(EXAMPLES) > 50


def test_directives_sit_on_blocks_that_run():
    stray = []
    for path in [*PAGES, *SNIPPETS]:
        lines = path.read_text().splitlines()
        for number, text in enumerate(lines, 1):
            if DIRECTIVE.match(text):
                following = next((line for line in lines[number:] if not DIRECTIVE.match(line)), "")
                opening = FENCE.match(following)
                if not opening or opening["info"].strip().split(" ")[0] not in RUN:
                    stray.append(f"{path.relative_to(ROOT)}:{number}")
    assert not stray, "directives not followed by a bash or python block: " + ", ".join(stray)


def test_readme_is_short_and_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", readme)
    assert len(links) >= 10
    missing = sorted({link for link in links if not (ROOT / link).is_file()})
    assert not missing, f"README links to missing pages: {missing}"
    # The two commands, exactly as CI (.ci/run) and a newcomer run them.
    assert ("bash scripts/setup && .venv/bin/imgcls train fashion-mnist --model knn --k 5 --metric l2 "
            "--out runs/fashion-knn") in readme
    assert "bash scripts/setup --dev && .venv/bin/python -m pytest -q" in readme


# -- running the examples ---------------------------------------------------------------------
@dataclass
class Session:
    """What every page's examples share: the environment, the fork server, a folder per page."""
    root: Path
    env: dict[str, str]
    forkserver: subprocess.Popen | None = None
    pages: dict[Path, PageRun] = field(default_factory=dict)

    def page(self, page: Path) -> PageRun:
        if page not in self.pages:
            folder = self.root / "pages" / str(page.relative_to(ROOT)).replace("/", "-").removesuffix(".md")
            folder.mkdir(parents=True)
            shutil.copy(ROOT / "imgcls" / "data" / "samples" / "chelsea.jpg", folder / "photo.jpg")
            (folder / "recipes").symlink_to(ROOT / "recipes")
            self.pages[page] = PageRun(self, folder, [b for b in EXAMPLES if b.page == page])
        return self.pages[page]

    def start_forkserver(self) -> None:
        socket_path = self.root / "forkserver.sock"
        socket_path.unlink(missing_ok=True)
        self.forkserver = subprocess.Popen([sys.executable, str(ROOT / "tests" / "forkserver.py"), "serve",
                                            str(socket_path)], env=self.env, cwd=self.root, stdout=subprocess.PIPE,
                                           text=True, start_new_session=True)
        line = self.forkserver.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the fork server did not start (it said {line!r})")
        self.env["IMGCLS_DOCS_SOCKET"] = str(socket_path)

    def stop_forkserver(self) -> None:
        """Stop the fork server and every command it is running (after a block's timeout, too)."""
        if self.forkserver is not None:
            with _suppress_lookup():
                os.killpg(self.forkserver.pid, signal.SIGKILL)
            self.forkserver.wait()
            self.forkserver = None

    def close(self) -> None:
        for run in self.pages.values():
            run.stop_server()
        self.stop_forkserver()


class _suppress_lookup:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        return kind is not None and issubclass(kind, ProcessLookupError)


@dataclass
class PageRun:
    session: Session
    folder: Path
    blocks: list[Block]
    done: int = 0                              # blocks run (or skipped) so far
    failed: str | None = None                  # the first block that failed
    server: tuple[str, subprocess.Popen, int] | None = None

    def run_through(self, block: Block) -> None:
        """Run this page's blocks up to and including block, each once, in order."""
        index = self.blocks.index(block)
        while self.done <= index:
            current = self.blocks[self.done]
            self.done += 1
            if self.failed:
                pytest.fail(f"an earlier example on this page failed: {self.failed}")
            if current.skip:
                if current is block:
                    pytest.skip(f"{block.name}: {block.skip}")
                continue
            try:
                self.run(current)
            except BaseException:
                self.failed = current.name
                raise

    def run(self, block: Block) -> None:
        code = block.code
        env = dict(self.session.env)
        if block.server:
            port = self.start_server(block.server)
            code = code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        if block.language == "bash":
            command = ["bash", "-c", "set -eo pipefail\n" + code]
        else:
            script = self.folder / f".example-{block.line}.py"
            script.write_text(code)
            command = [sys.executable, str(script)]
            if self.session.forkserver is not None:
                command = [sys.executable, "-S", str(ROOT / "tests" / "forkserver.py"), "python",
                           env["IMGCLS_DOCS_SOCKET"], str(script)]
        started = time.monotonic()
        try:
            done = subprocess.run(command, cwd=self.folder, env=env, capture_output=True, text=True,
                                  timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.session.stop_forkserver()         # it may still be running the command
            if env.get("IMGCLS_DOCS_SOCKET"):
                self.session.start_forkserver()
            pytest.fail(f"{block.name} ran over {BLOCK_TIMEOUT} s:\n{code}")
        seconds = time.monotonic() - started
        print(f"{block.name}: {seconds:.1f} s")
        assert done.returncode == 0, (f"{block.name} failed (exit status {done.returncode}, {seconds:.0f} s):\n{code}\n"
                                      f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}")

    def start_server(self, args: str) -> int:
        if self.server and self.server[0] == args:
            return self.server[2]
        self.stop_server()
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "imgcls.cli", "serve", *args.split(), "--port", str(port)],
                                  cwd=self.folder, env=self.session.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.server = (args, server, port)
        import httpx
        deadline = time.monotonic() + SERVER_START
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"imgcls serve {args} exited: {server.stderr.read()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    return port
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"imgcls serve {args} did not answer /healthz within {SERVER_START} s")

    def stop_server(self) -> None:
        if self.server:
            process = self.server[1]
            with _suppress_lookup():
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            self.server = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def docs_session():
    root = Path(tempfile.mkdtemp(prefix="imgcls-docs-"))
    bin_dir = root / "bin"
    bin_dir.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("IMGCLS_")}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", HOME=str(root / "home"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
               IMGCLS_CACHE=str(root / "cache"), IMGCLS_DATA=str(root / "data"), IMGCLS_MODELS=str(root / "models"),
               IMGCLS_PROGRESS="0", IMGCLS_RUNTIME="torch", MPLBACKEND="Agg", COLUMNS="100")
    (root / "home").mkdir()
    use_forkserver = os.environ.get("IMGCLS_DOCS_FORKSERVER", "1") != "0"
    imgcls = bin_dir / "imgcls"
    if use_forkserver:
        imgcls.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "{ROOT / "tests" / "forkserver.py"}" imgcls '
                          f'"$IMGCLS_DOCS_SOCKET" "$@"\n')
    else:
        imgcls.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m imgcls.cli "$@"\n')
    imgcls.chmod(0o755)
    state = Session(root, env)
    if use_forkserver:
        state.start_forkserver()
    try:
        yield state
    finally:
        state.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("block", EXAMPLES, ids=[block.name for block in EXAMPLES])
def test_example_runs(block, docs_session):
    docs_session.page(block.page).run_through(block)
