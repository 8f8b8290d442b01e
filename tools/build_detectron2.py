"""Build and install detectron2 0.6 for the optional ``backend: detectron2`` from its PyPI sdist.

detectron2 publishes no wheels, and its GitHub source (the upstream route,
``pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'``)
is not reachable from every machine. PyPI holds ``pb1-detectron2==0.6``, a re-upload of the last
upstream release: its Python files and model-zoo configs are byte-identical to upstream's tag
v0.6 (checked against a mirror of the repository: only READMEs and ``layers/csrc`` differ).
Without the C++ sources it cannot be built as published, and parts of it predate numpy 1.24,
Pillow 10 and setuptools 82. This script:

1. downloads that sdist by exact URL and checks its sha256 (or takes ``--sdist FILE``);
2. applies the changes in ``PATCHES`` below (each must match the sdist exactly, so a different
   file is an error, never a silent half-patch) and prints each with its reason;
3. builds a pure-Python wheel once into a wheelhouse (default ``~/.cache/ssl-bench/wheelhouse``,
   outside the clone so later clean clones reuse it; ``--wheelhouse`` / ``$SSL_BENCH_WHEELHOUSE``);
4. installs it, with its dependencies from the package index, into the running interpreter's
   environment (``make detectron2`` runs it with ``.venv/bin/python``).

Exit codes: 0 installed (or already installed), 1 failure, 3 the package index is unreachable
(no cached sdist/wheel to fall back on): the slow test skips on 3 only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

SDIST_URL = ("https://files.pythonhosted.org/packages/60/26/48f5bbb7ee492696a21da23303daeecdfe3942c498a70d34108"
             "acf63b2bd/pb1-detectron2-0.6.tar.gz")
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SDIST_DIR = "pb1-detectron2-0.6"
UPSTREAM_VERSION = "0.6"
# bump when PATCHES change: a wheel of an older recipe in the wheelhouse is then not reused
LOCAL_TAG = "sslbench1"
VERSION = f"{UPSTREAM_VERSION}+{LOCAL_TAG}"
WHEEL = f"detectron2-{VERSION}-py3-none-any.whl"
UNREACHABLE = 3

C_STUB = '''"""Stand-in for detectron2's C++ extension, which this build (ssl-bench's
tools/build_detectron2.py) leaves out: Fast R-CNN R-C4 and the VOC evaluator use torchvision's
NMS and RoIAlign. Any use of a detectron2 C++ op fails here, naming it."""


class MissingCppExtension(RuntimeError):
    pass


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise MissingCppExtension(
        f"detectron2._C.{name} is a C++ op, and this detectron2 was built without its C++ extension "
        "(ssl-bench tools/build_detectron2.py: the PyPI sdist has no C++ sources). The ssl-bench "
        "detectron2 backend (R-C4, VOC evaluation) does not need it; for deformable convolutions, "
        "rotated boxes or the fast COCO evaluator install detectron2 from source: "
        "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'")
'''

# (file, old text, new text, expected count, why); a file that is not there is created from new
PATCHES = [
    ("setup.py", 'name="pb1-detectron2",', 'name="detectron2",',
     1, "the upstream distribution name: an upstream install replaces this one (and vice versa), never both "
        "owning the detectron2 package"),
    ("setup.py", "    ext_modules=get_extensions(),\n"
                 "    cmdclass={\"build_ext\": torch.utils.cpp_extension.BuildExtension},\n",
     "    ext_modules=[],\n",
     1, "the sdist ships no C++ sources (layers/csrc is missing): a pure-Python wheel; R-C4 uses torchvision ops"),
    ("setup.py", 'package_data={"detectron2.model_zoo": get_model_zoo_configs()},',
     'package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},',
     1, "the configs already sit in detectron2/model_zoo/configs in the sdist; upstream globs a top-level "
        "configs/ that the sdist lacks, which would ship none"),
    ("detectron2/_C.py", None, C_STUB,
     0, "detectron2.layers imports detectron2._C at import time; this stand-in lets it import and makes any "
        "C++ op used by mistake fail with a message naming it"),
    ("detectron2/layers/nms.py", "return torch.ops.detectron2.nms_rotated(boxes, scores, iou_threshold)",
     "from detectron2 import _C  # ssl-bench build: no C++ extension; fails naming the op\n\n"
     "    return _C.nms_rotated(boxes, scores, iou_threshold)",
     1, "rotated NMS is a C++ op registered by the extension: fail with the same clear message"),
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "",
     1, "setuptools >= 82 has no pkg_resources; the configs are plain files inside the installed package"),
    ("detectron2/model_zoo/model_zoo.py",
     '    cfg_file = pkg_resources.resource_filename(\n'
     '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
     '    )\n',
     '    cfg_file = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)\n',
     1, "same path as pkg_resources.resource_filename gives for an installed (unzipped) package"),
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR",
     1, "Pillow 10 removed Image.LINEAR, an alias of Image.BILINEAR (same filter)"),
]
# numpy 1.24 removed these aliases of the builtins (deprecated since 1.20); same types
NUMPY_ALIAS = re.compile(r"\bnp\.(bool|int|float|str|object)\b(?![\w.])")


class Unreachable(Exception):
    pass


def default_wheelhouse() -> Path:
    if os.environ.get("SSL_BENCH_WHEELHOUSE"):
        return Path(os.environ["SSL_BENCH_WHEELHOUSE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ssl-bench" / "wheelhouse"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_sdist(wheelhouse: Path) -> Path:
    """The sdist in the wheelhouse, downloaded once and always checked against SDIST_SHA256."""
    path = wheelhouse / "sdists" / Path(SDIST_URL).name
    if path.is_file() and sha256(path) == SDIST_SHA256:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    print(f"[detectron2] downloading {SDIST_URL}")
    try:
        with urllib.request.urlopen(SDIST_URL, timeout=60) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        tmp.unlink(missing_ok=True)
        raise Unreachable(f"cannot download {SDIST_URL}: {exc}") from None
    actual = sha256(tmp)
    if actual != SDIST_SHA256:
        tmp.unlink()
        sys.exit(f"[detectron2] {SDIST_URL}: sha256 {actual}, expected {SDIST_SHA256}; refusing to build it")
    tmp.replace(path)
    return path


def apply_patches(src: Path) -> list[str]:
    """Edits the unpacked sdist in place; returns one line per change."""
    report = []
    for rel, old, new, count, why in PATCHES:
        path = src / rel
        if old is None:
            if path.exists():
                sys.exit(f"[detectron2] {rel} exists in the sdist; expected it absent "
                         f"(not the sdist this recipe is for)")
            path.write_text(new)
            report.append(f"{rel}: added. {why}")
            continue
        text = path.read_text()
        found = text.count(old)
        if found != count:
            sys.exit(f"[detectron2] {rel}: expected {count} occurrence(s) of {old!r}, found {found}: "
                     f"not the sdist this recipe is for")
        path.write_text(text.replace(old, new))
        first = old.strip().splitlines()[0]
        report.append(f"{rel}: {first!r} -> {new.strip().splitlines()[0] if new.strip() else '(removed)'!r}. {why}")
    aliases = []
    for path in sorted((src / "detectron2").rglob("*.py")):
        text = path.read_text()
        new, n = NUMPY_ALIAS.subn(lambda m: m.group(1), text)
        if n:
            path.write_text(new)
            aliases.append(f"{path.relative_to(src)} ({n})")
    if not aliases:
        sys.exit("[detectron2] no numpy aliases found: not the sdist this recipe is for")
    report.append("np.bool/np.int/np.float/np.str/np.object -> the builtins (numpy 1.24 removed these aliases of "
                  "them) in " + ", ".join(aliases))
    return report


def build_wheel(sdist: Path, wheelhouse: Path) -> Path:
    with tempfile.TemporaryDirectory(prefix="detectron2-build-") as tmp:
        with tarfile.open(sdist) as archive:
            if not hasattr(tarfile, "data_filter"):  # Python < 3.10.12 / 3.11.4: no safe extraction filter
                sys.exit("[detectron2] this Python's tarfile has no extraction filter; use Python >= 3.10.12 / 3.11.4")
            archive.extractall(tmp, filter="data")
        src = Path(tmp) / SDIST_DIR
        changes = f"changes to {sdist.name} (upstream v{UPSTREAM_VERSION}), and why:\n" + "".join(
            f"  - {line}\n" for line in apply_patches(src))
        print(f"[detectron2] {changes}", end="")
        out = Path(tmp) / "dist"
        # setup.py imports torch (for its version check), so build against this environment's torch;
        # upstream needs --no-build-isolation for the same reason
        env = {**os.environ, "D2_VERSION_SUFFIX": f"+{LOCAL_TAG}"}
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(out), str(src)], check=True, env=env)
        built = out / WHEEL
        if not built.is_file():
            sys.exit(f"[detectron2] the build did not produce {WHEEL}: {sorted(p.name for p in out.iterdir())}")
        wheelhouse.mkdir(parents=True, exist_ok=True)
        target = wheelhouse / WHEEL
        tmp_target = wheelhouse / f".{WHEEL}.{os.getpid()}.tmp"
        shutil.copyfile(built, tmp_target)
        tmp_target.replace(target)  # a wheel in the wheelhouse is always whole
        (wheelhouse / f"{WHEEL}.changes.txt").write_text(changes)  # shown again when the wheel is reused
    return target


def installed_version() -> str | None:
    try:
        return importlib.metadata.version("detectron2")
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheelhouse", type=Path, default=None, help="default: $SSL_BENCH_WHEELHOUSE or "
                        "~/.cache/ssl-bench/wheelhouse")
    parser.add_argument("--sdist", type=Path, default=None, help="a local copy of pb1-detectron2-0.6.tar.gz "
                        "(checked against its sha256) instead of downloading it")
    parser.add_argument("--rebuild", action="store_true", help="build the wheel again even if the wheelhouse has it")
    parser.add_argument("--no-install", action="store_true", help="only build the wheel")
    args = parser.parse_args(argv)
    wheelhouse = (args.wheelhouse or default_wheelhouse()).expanduser().resolve()

    current = installed_version()
    stale = current is not None and "+sslbench" in current and current != VERSION  # an older recipe's build
    if current is not None and not args.rebuild and not stale:
        print(f"[detectron2] detectron2 {current} is already installed in {sys.prefix}; nothing to do "
              f"(--rebuild to build and reinstall)")
        return 0
    wheel = wheelhouse / WHEEL
    try:
        if args.rebuild or not wheel.is_file():
            if args.sdist is not None:
                if sha256(args.sdist) != SDIST_SHA256:
                    sys.exit(f"[detectron2] {args.sdist}: sha256 is not {SDIST_SHA256} (pb1-detectron2 0.6)")
                sdist = args.sdist
            else:
                sdist = fetch_sdist(wheelhouse)
            wheel = build_wheel(sdist, wheelhouse)
            print(f"[detectron2] built {wheel}")
        else:
            print(f"[detectron2] using {wheel} (built before; --rebuild to build it again)")
            notes = wheelhouse / f"{WHEEL}.changes.txt"
            if notes.is_file():
                print(f"[detectron2] {notes.read_text()}", end="")
        if args.no_install:
            return 0
        # dependencies (fvcore, iopath, pycocotools, ...) come from the package index
        result = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--find-links", str(wheelhouse),
                                 *(["--force-reinstall", "--no-deps"] if current is not None else []),
                                 f"detectron2=={VERSION}"])
        if result.returncode:
            if not index_reachable():
                raise Unreachable("pip could not install detectron2's dependencies and https://pypi.org is unreachable")
            return 1
    except Unreachable as exc:
        print(f"[detectron2] {exc}", file=sys.stderr)
        return UNREACHABLE
    check = subprocess.run([sys.executable, "-c", "import detectron2, detectron2.modeling, detectron2.engine, "
                            "detectron2.evaluation, detectron2.model_zoo; print(detectron2.__version__)"],
                           capture_output=True, text=True)
    if check.returncode:
        sys.exit(f"[detectron2] installed, but importing it fails:\n{check.stderr}")
    print(f"[detectron2] installed detectron2 {installed_version()} (detectron2.__version__ "
          f"{check.stdout.strip()}) into {sys.prefix}")
    return 0


def index_reachable(url: str = "https://pypi.org/simple/pip/", timeout: float = 15) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return True
    except (urllib.error.URLError, OSError):
        return False


if __name__ == "__main__":
    sys.exit(main())
