"""`facegate templates list | import FILE | revoke SUBJECT | check | wipe [--yes]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge.config import Config, read_capped
from edge.errors import FacegateError, TemplateError
from edge.templates.store import TemplateStore, db_path, open_store, wipe_files
from edge.trust.keys import load_keys, parse_backend_public_key
from edge.trust.sealed import MAX_SEALED_FILE_BYTES, decode_sealed_file


def run(args: argparse.Namespace, cfg: Config) -> int:
    if args.action == "wipe":
        return _wipe(cfg, bool(args.yes))
    with open_store(cfg.state_dir, cfg.device.id) as store:
        if args.action == "list":
            # Past-due templates are destroyed first (data minimisation), so the list is true.
            for subject in store.expire():
                print(f"expired {subject}: ciphertext destroyed", file=sys.stderr)
            # Metadata only: subject ids, versions and dates, never template bytes.
            for info in store.list_all():
                print(json.dumps(info.as_dict(), sort_keys=True))
            return 0
        if args.action == "import":
            return _import(store, Path(args.file), cfg)
        if args.action == "check":
            return _check(store)
        if args.action == "revoke":
            info = store.revoke(args.subject)
            print(f"revoked {info.subject} (version {info.version}); ciphertext destroyed")
            return 0
    raise TemplateError(f"unknown templates action {args.action!r}")  # pragma: no cover


def _import(store: TemplateStore, path: Path, cfg: Config) -> int:
    try:
        raw = read_capped(path, MAX_SEALED_FILE_BYTES)
    except OSError as exc:
        raise TemplateError(f"cannot read {path} ({exc.strerror}); check the path") from None
    if raw is None:
        raise TemplateError(
            f"{path} is larger than {MAX_SEALED_FILE_BYTES >> 10} KiB, more than any sealed "
            "template; give the file the backend issued"
        )
    backend = parse_backend_public_key(cfg.backend.public_key)
    info, changed = store.import_sealed(decode_sealed_file(raw), backend)
    verb = "imported" if changed else "already present:"
    print(f"{verb} {info.subject} version {info.version}, expires {info.as_dict()['expires']}")
    return 0


def _check(store: TemplateStore) -> int:
    """Non-destructive look at the store: 0 when sound, 1 when records do not open, and a
    TemplateError (exit 2) when SQLite finds the file damaged."""
    problems, counts, refused = store.check()
    if problems:
        raise TemplateError(
            f"{store.path} fails SQLite's integrity check ({'; '.join(problems[:3])}); restore "
            f"it from a backup; only if there is none, `facegate templates wipe --yes`"
        )
    store.check_readable()
    for subject, exc in sorted(refused.items()):
        print(f"unreadable {subject}: {exc.args[0]}", file=sys.stderr)
    print(json.dumps({"integrity": "ok", **counts, "unreadable": len(refused)}, sort_keys=True))
    return 1 if refused else 0


def _wipe(cfg: Config, yes: bool) -> int:
    path = db_path(cfg.state_dir)
    if not yes:
        if not sys.stdin.isatty():
            raise TemplateError("wipe destroys every template; pass --yes to confirm")
        answer = input(f"destroy every template in {path}? type 'wipe' to confirm: ")
        if answer.strip() != "wipe":
            print("not wiped", file=sys.stderr)
            return 1
    if not path.exists():
        print(f"nothing to wipe: {path} does not exist")
        return 0
    try:
        with TemplateStore(path, load_keys(cfg.state_dir, cfg.device.id)) as store:
            n = store.wipe()
        print(f"wiped {n} templates from {path} (revocation tombstones kept)")
    except FacegateError as exc:
        # A store we cannot open (damaged file, lost keys) is destroyed as a whole instead.
        wipe_files(path)
        print(f"store could not be opened ({exc}); overwrote and removed {path}")
    return 0
