"""QEMU ``-d int,cpu_reset[,guest_errors][,in_asm]`` logs (TCG): what the emulated CPU saw.

One row per exception delivery (``N: v=0e e=0002 i=0 cpl=0 IP=0008:... pc=... SP=0010:...
CR2=...``), hardware interrupt (``Servicing hardware INT=0x..``), ``Triple fault`` and
``CPU Reset (CPU n)``. The register dump QEMU prints after a record fills the register
columns (rip, rflags, cr0..cr4, efer, gdt/idt base and limit, tr and its TSS base), the
``check_exception old: X new Y`` line before a record gives ``prev_vector`` (the exception
being delivered when this one was raised: #PF while delivering #PF -> #DF) and the last
``-d in_asm`` block before an exception is kept in ``in_asm`` (what ran just before it).

The log has no timestamps: ``ts_ns`` is null and ``seq`` is the order in the file. The whole
file is handled as columns (polars), so a 200 MB log parses in about a second.

Formats seen: QEMU 7.2 (Debian 12), 4.x (``env->regs[R_EAX]=``), older ones that print
`` EAX=`` instead, and qemu-system-i386 (8-digit registers, ``EAX=``/``EIP=`` dumps).
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import polars as pl

from kmltrace.errors import InputError
from kmltrace.formats import Parsed
from kmltrace.schema import CPU_RESET, EXCEPTION, HW_INTERRUPT, TRIPLE_FAULT, conform

NAME = "qemu_log"

_HEX = r"([0-9a-fA-F]+)"
EXCEPTION_RE = (r"^\s*(\d+): v=([0-9a-fA-F]+) e=([0-9a-fA-F]+) i=(\d+) cpl=(\d+) "
                rf"IP=([0-9a-fA-F]+):{_HEX} pc={_HEX} SP=([0-9a-fA-F]+):{_HEX}"
                rf"(?: CR2={_HEX})?(?: env->regs\[R_EAX\]={_HEX}| EAX={_HEX})?")
EXCEPTION_FIELDS = ["exc_count", "vector", "error_code", "soft_int", "cpl", "cs", "eip", "ip",
                    "ss", "rsp", "cr2", "rax_a", "rax_b"]
CHECK_RE = r"^check_exception old: 0x([0-9a-fA-F]+) new 0x([0-9a-fA-F]+)"
HWINT_RE = r"^Servicing hardware INT=0x([0-9a-fA-F]+)"
RESET_RE = r"^CPU Reset \(CPU (\d+)\)"

#: The start of each line kind we read, and the kind it tags (a dump line otherwise).
TAG_RE = (r"^(\s*\d+: v=|Servicing hardware INT=|CPU Reset \(CPU |Triple fault|SMM: "
          r"|check_exception old:|IN:|[A-Z][A-Z0-9]{0,5} ?=)")
TAG_KINDS = {"Servicing hardware INT=": HW_INTERRUPT, "CPU Reset (CPU ": CPU_RESET,
             "Triple fault": TRIPLE_FAULT, "SMM: ": "smm", "check_exception old:": "check",
             "IN:": "in_asm"}
#: Register-dump lines we read: first characters -> (regex, column names). 64-bit dumps
#: print RAX/RIP, 32-bit ones EAX/EIP: both land in the same columns.
DUMP_LINES: dict[str, tuple[str, list[str]]] = {
    "RAX=": (rf"^RAX={_HEX}", ["rax"]),
    "EAX=": (rf"^EAX={_HEX}", ["rax"]),
    "RSI=": (rf"RSP={_HEX}", ["dump_rsp"]),
    "ESI=": (rf"ESP={_HEX}", ["dump_rsp"]),
    "RIP=": (rf"^RIP={_HEX} RFL={_HEX}.*?CPL=(\d+)", ["rip", "rflags", "dump_cpl"]),
    "EIP=": (rf"^EIP={_HEX} EFL={_HEX}.*?CPL=(\d+)", ["rip", "rflags", "dump_cpl"]),
    "CS =": (rf"^CS ={_HEX} {_HEX}", ["dump_cs", "cs_base"]),
    "SS =": (rf"^SS ={_HEX} {_HEX}", ["dump_ss", "ss_base"]),
    "GS =": (rf"^GS ={_HEX} {_HEX}", ["gs", "gs_base"]),
    "TR =": (rf"^TR ={_HEX} {_HEX} {_HEX}", ["tr", "tr_base", "tr_limit"]),
    "GDT=": (rf"^GDT=\s+{_HEX} {_HEX}", ["gdt_base", "gdt_limit"]),
    "IDT=": (rf"^IDT=\s+{_HEX} {_HEX}", ["idt_base", "idt_limit"]),
    "CR0=": (rf"^CR0={_HEX} CR2={_HEX} CR3={_HEX} CR4={_HEX}", ["cr0", "dump_cr2", "cr3", "cr4"]),
    "EFER": (rf"^EFER={_HEX}", ["efer"]),
}
#: Columns read as hex numbers (everything else parsed is decimal or text).
_DECIMAL = {"exc_count", "soft_int", "cpl", "dump_cpl", "cpu"}
_HEX_COLUMNS = {name for _, names in DUMP_LINES.values() for name in names} - _DECIMAL
_HEX_COLUMNS |= set(EXCEPTION_FIELDS) - _DECIMAL

_SNIFF_RE = re.compile(
    rb"^(?:CPU Reset \(CPU \d+\)|check_exception old: 0x|\s*\d+: v=[0-9a-f]{2} e=[0-9a-f]{4} "
    rb"i=\d cpl=\d |Servicing hardware INT=0x|SMM: enter|Triple fault|IN: ?\S*\r?\n0x[0-9a-f]+:)",
    re.MULTILINE)


def sniff(head: bytes) -> bool:
    return _SNIFF_RE.search(head) is not None


#: magic numbers polars' CSV reader decompresses on its own (zstd, gzip, zlib)
_COMPRESSED_MAGIC = (b"\x28\xb5\x2f\xfd", b"\x1f\x8b", b"\x78\x01", b"\x78\x5e",
                     b"\x78\x9c", b"\x78\xda")
_CSV = dict(has_header=False, separator="\x1f", quote_char=None, new_columns=["text"],
            schema={"text": pl.String}, encoding="utf8-lossy", truncate_ragged_lines=True,
            comment_prefix=None, raise_if_empty=False)


def scan_lines(data: bytes) -> pl.LazyFrame:
    """The file's lines as a lazy frame (``line`` 1-based, ``text``; a blank line is null),
    read by polars' CSV reader with a separator byte logs never hold, so that filters run
    while reading and the 95% of an in_asm log that is disassembly is never materialised.
    A line holding that byte is cut there; if the first one does, the exact (slower)
    Python split is used instead."""
    if data[:2] in _COMPRESSED_MAGIC or data[:4] in _COMPRESSED_MAGIC:
        return read_lines(data).lazy()   # polars would try to inflate it: it is text to us
    try:
        pl.read_csv(io.BytesIO(data[:data.find(b"\n") + 1 or len(data)]), **_CSV)
        lazy = pl.scan_csv(io.BytesIO(data), row_index_name="line", row_index_offset=1, **_CSV)
        lazy = lazy.with_columns(pl.col("line").cast(pl.Int64))
    except pl.exceptions.PolarsError:   # e.g. the separator byte in the first line
        lazy = read_lines(data).lazy()
    if b"\r" in data:   # a log that went through a CRLF tool
        lazy = lazy.with_columns(pl.col("text").str.strip_suffix("\r"))
    return lazy


def read_lines(data: bytes) -> pl.DataFrame:
    """Every line, split exactly in Python (``line`` 1-based, ``text``)."""
    text = data.decode("utf-8", "replace")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return pl.DataFrame({"text": lines}, schema={"text": pl.String}) \
        .with_row_index("line", 1).with_columns(pl.col("line").cast(pl.Int64))


def _hex(column: str) -> pl.Expr:
    return pl.col(column).str.to_integer(base=16, dtype=pl.UInt64, strict=False)


def parse(path: Path) -> Parsed:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path=str(path)) from None
    events, errors, meta = parse_bytes(data, str(path))
    return Parsed(path=str(path), format=NAME, events=events, errors=errors, meta=meta)


def _marked(lines: pl.LazyFrame) -> pl.DataFrame:
    """The lines we read, tagged (``kind``), with ``rec`` (a record and its register dump)
    and ``asm_start`` (the last in_asm block started before each line)."""
    text = pl.col("text")
    # Most of an in_asm log is disassembly ("0x...:"), separators and blank lines: they are
    # dropped before any regex. One regex pass then tags the lines we read; untagged lines
    # are dropped too, and the gaps they leave in the line numbers still end a dump.
    tag = pl.col("tag")
    kind = (pl.when(tag.str.ends_with("v=")).then(pl.lit(EXCEPTION))
            .otherwise(tag.replace_strict(TAG_KINDS, default="dump", return_dtype=pl.String)))
    is_dump = pl.col("kind") == "dump"
    # a dump belongs to the record line right above it: any other line starts a new "rec"
    new_rec = ~is_dump | (pl.col("line").diff().fill_null(1) != 1)
    return (lines
            .filter(~text.str.starts_with("0x") & (text != "") & ~text.str.starts_with("----"))
            .with_columns(text.str.extract(TAG_RE, 1).alias("tag"))
            .filter(tag.is_not_null())
            .with_columns(kind.alias("kind"))
            .with_columns(new_rec.cum_sum().alias("rec"),
                          # -d in_asm: the last block started before each line
                          pl.when(pl.col("kind") == "in_asm").then(pl.col("line"))
                          .forward_fill().alias("asm_start"))
            .collect())


def parse_bytes(data: bytes, file: str) -> tuple[pl.DataFrame, list, dict]:
    lines = scan_lines(data)
    try:
        marked = _marked(lines)
    except (pl.exceptions.PolarsError, OSError):   # the fast reader refused: exact split
        lines = read_lines(data).lazy()
        marked = _marked(lines)

    records = marked.filter(pl.col("kind").is_in([EXCEPTION, HW_INTERRUPT, CPU_RESET,
                                                 TRIPLE_FAULT]))
    errors: list = []
    meta: dict = {}
    if records.height == 0 and marked.filter(pl.col("kind") != "dump").height == 0:
        raise InputError("no QEMU -d int/cpu_reset records in this file", path=file, line=1)

    # record lines -> fields
    exc = pl.col("text").str.extract_groups(EXCEPTION_RE)
    records = records.with_columns(
        exc.struct.rename_fields(EXCEPTION_FIELDS).alias("x"),
        pl.col("text").str.extract(HWINT_RE, 1).alias("hw_vector"),
        pl.col("text").str.extract(RESET_RE, 1).alias("reset_cpu"),
    ).unnest("x")

    # the check_exception line right above a record says what was being delivered
    checks = marked.filter(pl.col("kind") == "check").select(
        (pl.col("line") + 1).alias("line"),
        pl.col("text").str.extract(CHECK_RE, 1).alias("check_old"),
        pl.col("text").str.extract(CHECK_RE, 2).alias("check_new"))
    records = records.join(checks, on="line", how="left")

    # register dumps: one regex per kind of line, applied only to the lines of that kind
    dumps = marked.filter(pl.col("kind") == "dump").join(records.select("rec"), on="rec", how="semi") \
        .with_columns(pl.col("text").str.slice(0, 4).alias("prefix"))
    for prefix, (regex, names) in DUMP_LINES.items():
        part = dumps.filter(pl.col("prefix") == prefix)
        if part.height == 0:
            records = records.with_columns(pl.lit(None, dtype=pl.String).alias(n) for n in names
                                           if n not in records.columns)
            continue
        values = part.select("rec", pl.col("text").str.extract_groups(regex)
                             .struct.rename_fields(names).alias("v")).unnest("v") \
            .unique("rec", keep="first", maintain_order=True)
        records = records.join(values, on="rec", how="left", suffix="_dup")
        twins = [c for c in names if f"{c}_dup" in records.columns]  # RAX= and EAX= share
        records = records.with_columns(pl.coalesce(c, f"{c}_dup").alias(c) for c in twins) \
            .drop([f"{c}_dup" for c in twins])

    # the last in_asm block before each exception: only those blocks are assembled
    blocks = _asm_blocks(data, records.filter((pl.col("kind") == EXCEPTION)
                                              & pl.col("asm_start").is_not_null()))
    records = records.with_columns(pl.col("asm_start").replace_strict(
        blocks, default=None, return_dtype=pl.String).alias("in_asm"))

    events = _to_events(records, file)
    errors += _completeness_errors(data, marked, records, file)
    reset_cpus = sorted({int(c) for c in records["reset_cpu"].drop_nulls().to_list()})
    meta["cpus"] = max(reset_cpus) + 1 if reset_cpus else None
    if meta["cpus"] is None:
        del meta["cpus"]
    # QEMU's exception lines do not name the CPU: on a one-CPU machine they are all CPU 0
    if reset_cpus == [0]:
        events = events.with_columns(pl.col("cpu").fill_null(0))
    return conform(events), errors, meta


def _to_events(records: pl.DataFrame, file: str) -> pl.DataFrame:
    cols = records.with_columns(
        [_hex(c).alias(c) for c in _HEX_COLUMNS if c in records.columns]
        + [_hex(c).alias(c) for c in ("hw_vector", "check_old", "check_new")]
    )
    kind = pl.col("kind")
    no_prev = pl.col("check_old") == 0xFFFFFFFF
    vector = (pl.when(kind == EXCEPTION).then(pl.col("vector"))
              .when(kind == HW_INTERRUPT).then(pl.col("hw_vector"))
              .when(kind == TRIPLE_FAULT).then(pl.col("check_new")))
    return cols.select(
        pl.lit(None, dtype=pl.Int64).alias("ts_ns"),
        pl.int_range(pl.len(), dtype=pl.Int64).alias("seq"),
        pl.col("reset_cpu").cast(pl.Int32).alias("cpu"),
        pl.lit("qemu").alias("source"),
        pl.lit("qemu").alias("system"),
        kind.alias("event"),
        vector.cast(pl.Int32).alias("vector"),
        pl.coalesce("ip", "rip").alias("ip"),
        pl.when(pl.col("vector") == 14).then(pl.col("cr2")).alias("address"),
        pl.col("error_code"),
        pl.lit(file).alias("file"),
        pl.col("line"),
        pl.col("text").alias("raw"),
        pl.coalesce(pl.col("cpl").cast(pl.Int32), pl.col("dump_cpl").cast(pl.Int32)).alias("cpl"),
        pl.coalesce("cs", "dump_cs").alias("cs"),
        pl.coalesce("ss", "dump_ss").alias("ss"),
        pl.coalesce("rsp", "dump_rsp").alias("rsp"),
        pl.coalesce("cr2", "dump_cr2").alias("cr2"),   # a reset dump's CR2 too
        pl.col("exc_count").cast(pl.Int64),
        pl.col("soft_int").cast(pl.Int32),
        pl.when(no_prev).then(None).otherwise(pl.col("check_old")).cast(pl.Int32)
        .alias("prev_vector"),
        pl.coalesce("rax_a", "rax_b", "rax").alias("rax"),
        "rip", "rflags", "cr0", "cr3", "cr4", "efer", "cs_base", "ss_base", "gs", "gs_base",
        "tr", "tr_base", "tr_limit", "gdt_base", "gdt_limit", "idt_base", "idt_limit",
        "in_asm",
    )


def _asm_blocks(data: bytes, exceptions: pl.DataFrame) -> dict[int, str]:
    """asm_start -> the text of that ``IN:`` block, up to the blank line that ends it. Cut
    from the raw bytes: each block is the last ``IN:`` before the first exception record that
    follows it, found with a moving cursor (one memchr-speed pass, no second read of the
    lines)."""
    blocks: dict[int, str] = {}
    cursor = 0
    for start, text in exceptions.select("asm_start", "text").iter_rows():
        if start in blocks:
            continue
        at = data.find(text.encode("utf-8", "surrogateescape"), cursor)
        if at < 0:
            continue
        cursor = at + 1
        begin = data.rfind(b"\nIN:", 0, at) + 1
        if begin == 0 and not data.startswith(b"IN:"):
            continue
        end = data.find(b"\n\n", begin, at)
        block = data[begin:end if end >= 0 else at].decode("utf-8", "replace")
        blocks[start] = block.replace("\r\n", "\n").rstrip("\n")
    return blocks


def _completeness_errors(data: bytes, marked: pl.DataFrame, records: pl.DataFrame,
                         file: str) -> list:
    """A log cut mid-record or starting mid-dump: say so, keep what was read."""
    errors = []
    if marked.height == 0:
        return errors
    dumps = marked.filter(pl.col("kind") == "dump")
    first_rec = marked["rec"][0]
    if marked["kind"][0] == "dump":
        orphan = dumps.filter(pl.col("rec") == first_rec)
        errors.append(InputError(
            f"the log starts in the middle of a register dump (lines {orphan['line'][0]}-"
            f"{orphan['line'][-1]} belong to a record before the start and are ignored)",
            path=file, line=int(orphan["line"][0])))
    # the file's last non-blank line is the last tagged line exactly when it was tagged
    # (tagging goes by content), which spares counting the lines of a big file
    tail = data[-8192:].rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
    last_row = marked.tail(1)
    last_text = tail.decode("utf-8", "replace").rstrip("\r")
    if last_row.height and last_row["kind"][0] == "dump" and last_row["text"][0] == last_text:
        last_line = int(last_row["line"][0])
        rec = last_row["rec"][0]
        block = dumps.filter(pl.col("rec") == rec)
        if not block["text"].str.starts_with("EFER=").any():
            head = records.filter(pl.col("rec") == rec)
            where = f" of the record at line {head['line'][0]}" if head.height else ""
            errors.append(InputError(
                f"the log ends in the middle of a register dump{where}: registers after "
                f"line {last_line} are missing", path=file, line=last_line))
    return errors
