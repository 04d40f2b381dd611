"""`aios audit …`: verify, show, search, export and prove decisions in a sidecar's log.

The log folder, witness, signing key and model repository come from the stack config
(`--config`, the local stack's by default) unless named with `--dir`, `--witness`,
`--public-key` and `--model-repo`. Output is for people (a block or a table) unless
`--json`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from aios.config import WITNESS_URL, SignedLogSettings, StackConfig

PAGE = 20
# Parquet row group size of `aios audit export`.
PARQUET_ROWS = 10_000


def _log(args: argparse.Namespace, config: StackConfig) -> SignedLogSettings:
    """The log the command reads: a named folder, else the config's decision log; with the
    witness, index and name given on the command line in place of the config's."""
    given = _given_dir(args)
    base = SignedLogSettings(directory=given) if given is not None else \
        config.sidecar.decision_log
    changes: dict[str, Any] = {}
    if args.witness is not None:
        url = re.match(WITNESS_URL, args.witness) is not None
        changes["witness_url" if url else "witness_directory"] = \
            args.witness if url else Path(args.witness)
        changes["witness_directory" if url else "witness_url"] = None
    if args.log_name is not None:
        changes["name"] = args.log_name
    if args.index is not None:
        changes["index_url"] = args.index
    return SignedLogSettings.model_validate({
        **base.model_dump(include=set(SignedLogSettings.model_fields)), **changes})


def _dir(args: argparse.Namespace, config: StackConfig) -> Path:
    return _log(args, config).directory


def _given_dir(args: argparse.Namespace) -> Path | None:
    given: Path | None = args.dir or getattr(args, "directory", None)
    return given


def _witness(args: argparse.Namespace, config: StackConfig) -> Any:
    """Where the log's checkpoints are (`_log`)."""
    from aios.witness import open_witness

    return open_witness(_log(args, config))


def _search(args: argparse.Namespace, config: StackConfig, query: Any,
            progress: Any = None) -> tuple[list[Any], int]:
    from aios.auditindex import search

    log = _log(args, config)
    return search(log.directory, query, progress, url=log.index_url, log=log.log_name)


def _public_key(args: argparse.Namespace, config: StackConfig) -> Any:
    """The key checkpoints are checked with: named, else (for the config's own log) the
    public half of the config's signing key, if it is there."""
    from aios.checkpoint import load_public_key

    if args.public_key is not None:
        return load_public_key(args.public_key)
    path = config.sidecar.decision_log.signing_key_file
    if _given_dir(args) is None and path is not None and path.is_file():
        return load_public_key(path)
    return None


def _names(args: argparse.Namespace, config: StackConfig) -> Any:
    from aios.readable import load_names

    return load_names(args.model_repo or config.sidecar.parity.model_repository)


class Bar:
    """A progress line on stderr for long work (indexing, exports); silent off a tty."""

    def __init__(self, what: str, out: TextIO = sys.stderr, total: int = 0,
                 unit: str = "records") -> None:
        self._what = what
        self._out = out
        self._total = total  # 0: not known, so a count without a bar
        self._unit = unit
        self._shown = False

    def __call__(self, done: int) -> None:
        if self._out.isatty():
            if self._total:
                filled = 30 * done // self._total
                self._out.write(f"\r{self._what} [{'#' * filled}{'.' * (30 - filled)}] "
                                f"{done:,}/{self._total:,} {self._unit}")
            else:
                self._out.write(f"\r{self._what}: {done:,} {self._unit}")
            self._out.flush()
            self._shown = True

    def close(self) -> None:
        if self._shown:
            self._out.write("\n")


def cmd_verify(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.auditlog import verify
    from aios.checkpoint import CheckpointError

    try:
        key = _public_key(args, config)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log = _log(args, config)
    bar = Bar("verifying")
    try:
        report = verify(log.directory, _witness(args, config), key, bar)
    finally:
        bar.close()
    index = _check_index(log) if report.intact else None
    if args.json:
        print(json.dumps({**report.to_json(), "index_rows_wrong": index}, indent=2))
        return 0 if report.intact else 1
    for warning in report.warnings:
        print(f"warning: {warning}")
    if index:
        print(f"warning: the search index held {index} row(s) that did not match the log "
              "(edited, missing or extra; a search could have missed a record): rebuilt")
    if not report.intact:
        print(f"{report.kind.upper()}: {report.problem}")
        return 1
    signed = (f"; {report.checkpoints} signed checkpoint(s) match, the latest covering "
              f"{report.covered} records") if report.checkpoints else ""
    print(f"intact: {report.records} records in {report.segments} segment(s), last "
          f"sequence {report.last_sequence}, head {report.last_hash.hex()[:16]}{signed}")
    return 0


def _check_index(log: SignedLogSettings) -> int | None:
    """Rows of the log's search index that disagree with the segments (rebuilt), or None
    if there is no index to check."""
    from aios.auditindex import INDEX_FILE, AuditIndex

    if log.index_url is None and not (log.directory / INDEX_FILE).exists():
        return None
    with AuditIndex(log.directory, url=log.index_url, log=log.log_name) as index:
        return index.check()


def _find(args: argparse.Namespace, config: StackConfig, ident: str) -> list[Any]:
    from aios.auditindex import Query

    bar = Bar("indexing")
    try:
        found, _ = _search(args, config, Query((("decision_id", ident),), limit=10), bar)
        if not found:
            found, _ = _search(args, config, Query((("request_id", ident),), limit=10), bar)
    finally:
        bar.close()
    return found


def cmd_show(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.readable import readable, text_block

    ident = args.id or args.request_id
    if not ident:
        print("error: name a decision id (or --request-id)", file=sys.stderr)
        return 2
    try:
        found = _find(args, config, ident)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not found:
        print(f"no record of decision or request {ident!r} in {_dir(args, config)}",
              file=sys.stderr)
        return 1
    names = _names(args, config)
    docs = [readable(r, names) for r in found]
    if args.json:
        print(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2))
    else:
        print("\n\n".join(text_block(d) for d in docs))
    return 0


def _query(args: argparse.Namespace, limit: int, page: int) -> Any:
    from aios.auditindex import Query, parse_time_ns

    fields = tuple((name, getattr(args, name)) for name in
                   ("key", "request_id", "decision_id", "tenant", "model", "version", "outcome")
                   if getattr(args, name, None) is not None)
    return Query(fields, parse_time_ns(args.since, "--since"),
                 parse_time_ns(args.until, "--until"),
                 limit, page)


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.auditindex import COUNT_CAP
    from aios.readable import readable

    try:
        query = _query(args, args.limit, args.page)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar = Bar("indexing")
    try:
        found, total = _search(args, config, query, bar)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    names = _names(args, config)
    docs = [readable(r, names) for r in found]
    if args.json:
        print(json.dumps({"total": total, "total_capped": total > COUNT_CAP,
                          "page": args.page, "limit": args.limit,
                          "decisions": docs}, indent=2))
        return 0
    if docs and all(d.get("kind") == "route_change" for d in docs):  # a change log
        rows = [[str(d["sequence"]), d["time"], d["model"], str(d["revision"]), d["who"] or "-",
                 d["action"], d["reason"] or "-"] for d in docs]
        print(table(rows, ["RECORD", "TIME", "MODEL", "REVISION", "WHO", "ACTION", "REASON"]))
    elif docs and all(d.get("kind") == "audit_read" for d in docs):  # an access log
        rows = [[str(d["sequence"]), d["time"], d["who"] or "-", d["action"],
                 json.dumps(d["asked"], sort_keys=True), ",".join(d["decision_ids"]) or "-"]
                for d in docs]
        print(table(rows, ["RECORD", "TIME", "WHO", "ACTION", "ASKED", "SHOWN"]))
    else:
        rows = [[d["decision_id"] or "-", d["time"], d["business_key"] or "-",
                 d["tenant"] or "-", f"{d['model']} v{d['version']}",
                 d["route"]["reason"] or "-", d["outcome"] + (" (shadow)" if d["shadow"] else "")]
                for d in docs]
        print(table(rows, ["DECISION", "TIME", "KEY", "TENANT", "MODEL", "ROUTE", "OUTCOME"]))
    first = (args.page - 1) * args.limit
    of = f"over {COUNT_CAP:,}" if total > COUNT_CAP else str(total)
    what = "decision(s)" if not docs or "decision_id" in docs[0] else "record(s)"
    print(f"\n{first + 1 if rows else 0}-{first + len(rows)} of {of} "
          f"(--page {args.page + 1} for more)" if first + len(rows) < total else
          f"\n{total} {what}")
    return 0


def _flat(doc: dict[str, Any], lists: bool = False) -> dict[str, Any]:
    """One CSV or Parquet row: the record's fields, the route's, and each input column by
    name (its values as a JSON list, or with ``lists`` as a list)."""
    if doc.get("kind") in ("route_change", "audit_read"):
        return {k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
                for k, v in doc.items()}
    row = {k: v for k, v in doc.items() if k not in ("inputs", "outputs", "route")}
    row["parity_flags"] = " ".join(doc["parity_flags"])
    row["shadow_agreement"] = json.dumps(doc["shadow_agreement"]) \
        if doc["shadow_agreement"] else ""
    for k, v in doc["route"].items():
        row[f"route_{k}"] = ",".join(f"{n}={w}" for n, w in v.items()) if k == "weights" \
            else v
    for kind in ("inputs", "outputs"):
        for tensor in doc[kind]:
            if "rows" in tensor:
                for name in tensor["rows"][0] if tensor["rows"] else ():
                    cells = [r[name] for r in tensor["rows"]]
                    column = [c["value"] for c in cells]
                    row[name] = f"({cells[0]['redacted']})" if "redacted" in cells[0] else \
                        column if lists else json.dumps(column)
            elif "values" in tensor:
                row[tensor["name"]] = json.dumps(tensor["values"])  # any shape: as text
            else:
                row[tensor["name"]] = f"({tensor['redaction']})"
    return row


@contextlib.contextmanager
def _sink(fmt: str, path: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Where exported documents go: a JSON line each, a CSV row each (columns from the
    first), or Parquet row groups of PARQUET_ROWS (lists kept as lists)."""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows: list[dict[str, Any]] = []
        parquet: Any = None

        def flush() -> None:
            nonlocal parquet
            if not rows:
                return
            table = pa.Table.from_pylist(rows, schema=parquet.schema_arrow if parquet else None)
            parquet = parquet or pq.ParquetWriter(path, table.schema)
            parquet.write_table(table)
            rows.clear()

        def add(doc: dict[str, Any]) -> None:
            rows.append(_flat(doc, lists=True))
            if len(rows) == PARQUET_ROWS:
                flush()

        try:
            yield add
            flush()
        finally:
            if parquet is not None:
                parquet.close()
            elif not path.exists():
                path.write_bytes(b"")
        return
    with path.open("w", newline="") as out:
        if fmt == "jsonl":
            def line(doc: dict[str, Any]) -> None:
                out.write(json.dumps(doc) + "\n")

            yield line
            return
        writer: Any = None

        def row(doc: dict[str, Any]) -> None:
            nonlocal writer
            flat = _flat(doc)
            if writer is None:
                writer = csv.DictWriter(out, fieldnames=list(flat), extrasaction="ignore")
                writer.writeheader()
            writer.writerow(flat)

        yield row


def _pages(args: argparse.Namespace, config: StackConfig) -> Iterator[Any]:
    from aios.auditindex import MAX_PAGE

    page = 1
    while True:
        found, _ = _search(args, config, _query(args, MAX_PAGE, page))
        yield from found
        if len(found) < MAX_PAGE:
            return
        page += 1


def cmd_export(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.readable import readable

    directory = _dir(args, config)
    names = _names(args, config)
    args.since, args.until = getattr(args, "from"), args.to
    try:
        _query(args, 1, 1)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_path: Path = args.out
    bar = Bar("exporting")
    count, first, last = 0, None, None
    try:
        with _sink(args.format, out_path) as write:
            for record in _pages(args, config):
                doc = readable(record, names)
                write(doc)
                first = first or doc
                last = doc
                count += 1
                if count % 1000 == 0:
                    bar(count)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    digest = hashlib.sha256()
    with out_path.open("rb") as written:
        while chunk := written.read(1 << 20):
            digest.update(chunk)
    manifest = _manifest(args, config, directory, count, first, last, digest.hexdigest())
    manifest_path = out_path.with_name(out_path.name + ".manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=2))
    print(f"{count} decision(s) to {out_path}; manifest {manifest_path}")
    return 0


def _manifest(args: argparse.Namespace, config: StackConfig, directory: Path, count: int,
              first: dict[str, Any] | None, last: dict[str, Any] | None,
              sha256: str) -> dict[str, Any]:
    witness = _witness(args, config)
    checkpoints = witness.checkpoints() if witness is not None else []
    covering = [c for c in checkpoints if last is not None and c.size >= last["sequence"]]
    return {"log": str(directory), "format": args.format, "file_sha256": sha256,
            "from": args.since, "to": args.until, "count": count,
            "first": {"sequence": first["sequence"], "hash": first["hash"]} if first else None,
            "last": {"sequence": last["sequence"], "hash": last["hash"]} if last else None,
            "checkpoint": covering[0].to_json() if covering else None,
            "check": "aios audit verify --dir <log> checks the log against the checkpoint; "
                     "aios audit prove <decision id> gives any one decision's proof"}


def cmd_prove(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.auditlog import prove

    witness = _witness(args, config)
    checkpoints = witness.checkpoints() if witness is not None else []
    if not checkpoints:
        print("error: the witness holds no checkpoint (is signing_key_file set?)",
              file=sys.stderr)
        return 1
    found = _find(args, config, args.id)
    if not found:
        print(f"no record of decision {args.id!r}", file=sys.stderr)
        return 1
    covering = [c for c in checkpoints if c.size >= found[0].sequence]
    if not covering:
        print(f"decision {args.id} (record {found[0].sequence}) is after the latest "
              f"checkpoint (size {checkpoints[-1].size}): try again after the next one",
              file=sys.stderr)
        return 1
    proof = prove(_dir(args, config), found[0].decision_id, covering[-1])
    text = json.dumps(proof, indent=2)
    if args.out:
        args.out.write_text(text)
        print(f"proof of decision {args.id} in a tree of {proof['tree_size']} to {args.out}")
    else:
        print(text)
    return 0


def cmd_check_proof(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.auditlog import check_proof
    from aios.checkpoint import CheckpointError, load_public_key

    try:
        key = load_public_key(args.public_key)
        doc = json.loads(args.file.read_text())
        record = check_proof(doc, key)
    except (OSError, ValueError) as exc:
        reason = exc if isinstance(exc, CheckpointError) else f"cannot read {args.file}: {exc}"
        print(f"INVALID: {reason}")
        return 1
    print(f"valid: decision {record.decision_id} (record {record.sequence}, model "
          f"{record.model} v{record.version}) is leaf {doc['leaf_index']} of a tree of "
          f"{doc['tree_size']} signed by key {doc['checkpoint']['key_id']}")
    return 0


def cmd_keygen(args: argparse.Namespace, config: StackConfig) -> int:
    from aios.checkpoint import key_id, write_key_pair

    try:
        public = write_key_pair(args.private, args.public)
    except FileExistsError:
        print(f"error: {args.private} exists; not overwritten", file=sys.stderr)
        return 1
    print(f"signing key {args.private} (keep it outside the log folder), public key "
          f"{args.public}, key id {key_id(public)}")
    return 0


def add_audit_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add `aios audit …` to the CLI."""
    audit = sub.add_parser("audit", help="the sidecar's decision log",
                           description="the sidecar's decision log")
    asub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    log = argparse.ArgumentParser(add_help=False, parents=[common])
    log.add_argument("--dir", type=Path, help="the log folder (default: the config's)")
    log.add_argument("--witness", help="the checkpoint folder, or a redis:// or "
                     "postgresql:// witness URL (default: the "
                     "config's, or <dir>-checkpoints)")
    log.add_argument("--log-name", help="the log's name in a shared witness or index "
                     "(default: its folder's name)")
    log.add_argument("--index", help="a postgresql:// search index shared by a fleet's logs "
                     "(default: the config's, or a SQLite file in the log folder)")
    log.add_argument("--public-key", type=Path, help="PEM public key checkpoints are "
                     "signed with (default: from the config's signing_key_file)")
    log.add_argument("--model-repo", type=Path, help="where profile.json names the "
                     "features (default: the config's)")
    log.add_argument("--json", action="store_true", help="JSON instead of text")

    def add(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = asub.add_parser(name, parents=[log], help=help_text,
                                                     description=help_text)
        p.set_defaults(handler=handler)
        return p

    verify = add("verify", cmd_verify, "check the chain, HEAD and the signed checkpoints: "
                 "exit 0 if intact, 1 naming what was tampered with")
    verify.add_argument("directory", type=Path, nargs="?", help="the log folder (or --dir)")
    show = add("show", cmd_show, "one decision, readable (by decision id or request id)")
    show.add_argument("id", nargs="?", help="decision id (x-aios-decision-id) or request id")
    show.add_argument("--request-id", help="find by request id")
    search = add("search", cmd_search, "find decisions (a page at a time)")
    for flag, what in (("--key", "business key (e.g. the claim id)"),
                       ("--request-id", "request id"), ("--decision-id", "decision id"),
                       ("--tenant", "tenant"), ("--model", "model"), ("--version", "version"),
                       ("--outcome", "outcome (ok, 400, UNAVAILABLE, ...)")):
        search.add_argument(flag, help=what)
    search.add_argument("--since", help="from this time on (ISO 8601, UTC unless given)")
    search.add_argument("--until", help="before this time")
    search.add_argument("--limit", type=int, default=PAGE, help=f"per page (default {PAGE})")
    search.add_argument("--page", type=int, default=1)
    export = add("export", cmd_export, "write decoded decisions and a manifest")
    export.add_argument("--from", help="from this time on (ISO 8601)")
    export.add_argument("--to", help="before this time")
    export.add_argument("--format", choices=("jsonl", "csv", "parquet"), default="jsonl")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    for name in ("key", "tenant", "model", "version", "outcome"):
        export.set_defaults(**{name: None})
    prove = add("prove", cmd_prove, "an inclusion proof of one decision in the latest "
                "signed checkpoint")
    prove.add_argument("id", help="decision id")
    prove.add_argument("--out", type=Path, help="write the proof here (default: print it)")
    check = asub.add_parser("check-proof", parents=[common], help="check a proof with the "
                            "public key alone", description="check a proof with the public "
                            "key alone: exit 0 if valid")
    check.set_defaults(handler=cmd_check_proof)
    check.add_argument("file", type=Path)
    check.add_argument("--public-key", type=Path, required=True)
    keygen = asub.add_parser("keygen", parents=[common], help="make an Ed25519 signing key "
                             "pair for checkpoints", description="make an Ed25519 key pair")
    keygen.set_defaults(handler=cmd_keygen)
    keygen.add_argument("--private", type=Path, required=True)
    keygen.add_argument("--public", type=Path, required=True)
