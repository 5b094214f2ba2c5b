"""`pld models`: the GGUF models on this machine, fetching one, probing one as the student."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .console import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK, ConsoleProgress, _install_sigint
from .options import _positive_int


def _models_n_ctx(args: argparse.Namespace) -> int:
    """The context size models are sized for: --n-ctx, else the project's student setting, else 4096."""
    if getattr(args, "n_ctx", None):
        return int(args.n_ctx)
    if getattr(args, "project", None):
        from ..core.project import Project
        from ..core.settings import load_settings
        with Project.open(args.project, read_only=True) as project:
            return load_settings(project).student_n_ctx
    return 4096


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def cmd_models(args: argparse.Namespace) -> int:
    from ..backends.gguf_file import available_memory_bytes
    from ..backends.model_fetch import CURATED
    from ..backends.model_store import (
        add_model_folder,
        find_models,
        memory_estimate,
        model_locations,
        remove_model_folder,
    )

    if args.add_folder:
        add_model_folder(args.add_folder)
    if args.remove_folder:
        remove_model_folder(args.remove_folder)
    n_ctx = _models_n_ctx(args)
    free = available_memory_bytes()
    models = find_models()
    on_disk = {m.label for m in models if m.source == "Hugging Face cache" and m.status == "ok"}
    rows = []
    for m in models:
        row = m.to_json()
        if m.usable:
            est = memory_estimate(m, n_ctx, free)
            row["memory"] = {"n_ctx": n_ctx, "total": est.total, "weights": est.weights, "kv_cache": est.kv_cache,
                             "compute": est.compute, "available": est.available, "fits": est.fits}
        rows.append(row)
    curated = [{**c.to_json(), "on_disk": f"{c.repo}/{c.filename}" in on_disk} for c in CURATED]
    if args.json:
        print(json.dumps({"locations": [loc.__dict__ for loc in model_locations()], "models": rows,
                          "curated": curated, "available_memory": free}, indent=2))
        return EXIT_OK
    print("Searched: " + "; ".join(f"{loc.source} {loc.path}" + ("" if loc.exists else " (none)")
                                   for loc in model_locations()))
    if not models:
        print("No GGUF models found on this machine.")
    for m, row in zip(models, rows):
        if m.status != "ok":
            print(f"  [{m.status}] {m.source}: {m.label} - {m.problem}\n      {m.path}")
            continue
        mem = row.get("memory")
        fits = "" if not mem else (f", needs ~{_gib(mem['total'])} at {n_ctx:,} ctx"
                                   + ("" if mem["fits"] is None else (" (fits)" if mem["fits"] else " (does NOT fit)")))
        print(f"  {m.source}: {m.label}\n      {m.name}: {m.architecture or '?'}, {m.n_params / 1e9:.2f} B params, "
              f"{m.quantisation or '?'}, {_gib(m.size_bytes)}, trained ctx {m.n_ctx_train:,}, chat template "
              f"{'yes' if m.has_chat_template else 'no'}{fits}" + (f" - {m.problem}" if m.problem else "")
              + f"\n      {m.path}")
    print("\nTo fetch (pld models fetch NAME):")
    for c in curated:
        mark = " [on disk]" if c["on_disk"] else ""
        print(f"  {c['key']:<24} {c['role']:<19} ~{c['approx_bytes'] / 1e9:.1f} GB  {c['repo']}:{c['filename']}{mark}"
              f"\n  {'':<24} licence: {c['licence']}")
    if free is not None:
        print(f"\nFree memory: {_gib(free)}.")
    return EXIT_OK


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from ..backends.model_fetch import FetchError, HubOffline, fetch_model
    from ..backends.model_store import find_models
    from ..core.progress import Cancelled

    progress = ConsoleProgress(quiet=args.quiet)
    _install_sigint(progress)
    try:
        result = fetch_model(args.spec, progress, revision=args.revision)
    except HubOffline as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        usable = [m for m in find_models() if m.usable]
        print("On this machine:" if usable else "No usable GGUF models on this machine.", file=sys.stderr)
        for m in usable:
            print(f"  {m.label} ({m.name}, {m.quantisation}) {m.path}", file=sys.stderr)
        return EXIT_FAILED
    except Cancelled:
        progress.close()
        print("Stopped. The part downloaded is kept; the same command resumes.", file=sys.stderr)
        return EXIT_CANCELLED
    except FetchError as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        how = ("already on disk" if result.downloaded_bytes == 0 and result.resumed_from == 0 else
               f"resumed at {_gib(result.resumed_from)}" if result.resumed_from else "downloaded")
        check = f"sha256 {result.sha256} verified" if result.sha256 else "size checked (no sha256 published)"
        print(f"{result.repo}/{result.filename}: {_gib(result.size_bytes)}, {how}, {check}.", file=sys.stderr)
        print(result.path)
    return EXIT_OK


def cmd_models_probe(args: argparse.Namespace) -> int:
    from ..backends.model_probe import probe_model
    from ..core.progress import Cancelled

    progress = ConsoleProgress(quiet=args.quiet)
    _install_sigint(progress)
    try:
        result = probe_model(args.path, progress, project=args.project, n_examples=args.n, n_ctx=args.n_ctx)
    except Cancelled:
        print("Stopped.", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        progress.close()
    print(json.dumps(result.to_json(), indent=2) if args.json else result.describe())
    return EXIT_OK


def _add_models_parser(sub: Any) -> None:
    m = sub.add_parser("models", help="GGUF models on this machine; fetch one; probe one (pld models -h)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--project", help="size models for this project's student context size")
    m.add_argument("--n-ctx", type=_positive_int, help="context size to size models for (default 4096)")
    m.add_argument("--add-folder", metavar="DIR", help="also search this folder (remembered on this machine)")
    m.add_argument("--remove-folder", metavar="DIR", help="stop searching this added folder")
    m.set_defaults(func=cmd_models)
    msub = m.add_subparsers(dest="models_command")
    f = msub.add_parser("fetch", help="download a curated model (see pld models) or org/repo[:file.gguf]")
    f.add_argument("spec", metavar="NAME_OR_REPO[:FILE]")
    f.add_argument("--revision", default="main")
    f.add_argument("--json", action="store_true")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_models_fetch)
    pr = msub.add_parser("probe", help="memory need and measured seconds per example of a GGUF as the student")
    pr.add_argument("path")
    pr.add_argument("--project", help="use this project's current rule prompt, dev examples and context size")
    pr.add_argument("--n", type=_positive_int, default=4, help="examples to classify (default 4)")
    pr.add_argument("--n-ctx", type=_positive_int)
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_models_probe)
