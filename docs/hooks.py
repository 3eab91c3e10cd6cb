"""MkDocs hook: the results pages and the notebooks are built from where they live in the repository
(``benchmarks/results/``, ``notebooks/``), so git holds one copy of each."""

from __future__ import annotations

from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
# (source folder the site path is relative to, site paths as glob patterns)
SOURCES = (
    (ROOT / "benchmarks", ("results/*.md", "results/img/*")),
    (ROOT, ("notebooks/*.ipynb",)),
)


@event_priority(100)  # before the plugins (mkdocs-jupyter converts the notebooks in its own on_files)
def on_files(files: Files, config) -> Files:
    for src_dir, patterns in SOURCES:
        for pattern in patterns:
            for path in sorted(src_dir.glob(pattern)):
                if path.is_file():
                    files.append(
                        File(
                            path.relative_to(src_dir).as_posix(),
                            src_dir=str(src_dir),
                            dest_dir=config["site_dir"],
                            use_directory_urls=config["use_directory_urls"],
                        )
                    )
    return files
