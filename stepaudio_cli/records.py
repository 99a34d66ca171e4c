"""The result record: what `ask --json` prints and `batch` stores, as a JSONL line or a CSV
row. One builder, one field list, one CSV mapping.

    file           the audio file (ask with several files: their list)
    sha256         the file's content hash (batch; resume and duplicate detection)
    prompt         the question
    model          the model that answered
    params         sampling, system prompt and reasoning-length settings
    key            hash of content + prompt + model + params (batch resume)
    reasoning      the reasoning text (None when hidden or failed)
    answer         the answer text
    usage          prompt_tokens, completion_tokens, reasoning_tokens
    timings        time_to_first_token, total, tokens_per_s (seconds)
    finish_reason  "stop", or "length" when cut off at the length limit
    audio_seconds  length of the audio
    error          why the file failed, else None
    windows        a recording answered in windows: [{start, end, answer, usage, finish_reason}]
                   (seconds; usage above is then the total of every request), else None
    warnings       what the answer should be read with (audio shorter than its header says,
                   windows cut off at the length limit), else None
    conversation   ``ask`` only: the conversation's id (``ask -c`` / ``--conversation`` continue it)
    turn           ``ask`` only: the turn's number in its conversation, from 1

``check_record`` is the shape a stored record must have (a results file is read back only
when every line has it; numbers are finite); ``same_question`` tells records of one question
(prompt, model and the parameters that shape the answer) apart from another's; the CSV mapping
neutralises formula cells for spreadsheets and reads back files written before its later columns.
"""

from __future__ import annotations

import json
import math

from stepaudio_cli.engines import Result
from stepaudio_cli.request import Request, Sampling, Thinking

FIELDS = [
    "file",
    "sha256",
    "prompt",
    "model",
    "params",
    "key",
    "reasoning",
    "answer",
    "usage",
    "timings",
    "finish_reason",
    "audio_seconds",
    "error",
    "windows",
    "warnings",
]


#: Fields a later version added: records written before them (and CSV rows) may lack them.
_LATER_FIELDS = ("windows", "warnings")
_TEXT_FIELDS = ("sha256", "prompt", "model", "key", "reasoning", "answer", "finish_reason", "error")
_OBJECT_FIELDS = ("params", "usage", "timings")


def check_record(value: object) -> None:
    """Raise ValueError saying why ``value`` is not a batch result record (a JSON object with
    every field, each of its type); extra keys are allowed (a later version may add some)."""
    if not isinstance(value, dict):
        raise ValueError(f"a JSON {type(value).__name__.replace('NoneType', 'null')}, not an object")
    missing = [k for k in FIELDS if k not in value and k not in _LATER_FIELDS]
    if missing:
        raise ValueError(f"no {', '.join(repr(k) for k in missing)}")
    if not isinstance(value["file"], str):
        raise ValueError("'file' is not a string")
    for k in _TEXT_FIELDS:
        if value[k] is not None and not isinstance(value[k], str):
            raise ValueError(f"{k!r} is not a string or null")
    for k in _OBJECT_FIELDS:
        if value[k] is not None and not isinstance(value[k], dict):
            raise ValueError(f"{k!r} is not an object or null")
    windows = value.get("windows")
    if windows is not None and not (isinstance(windows, list) and all(isinstance(w, dict) for w in windows)):
        raise ValueError("'windows' is not a list of objects or null")
    warnings = value.get("warnings")
    if warnings is not None and not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
        raise ValueError("'warnings' is not a list of strings or null")
    seconds = value["audio_seconds"]
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds)
    ):
        raise ValueError("'audio_seconds' is not a finite number or null")


def finite_float(text: str) -> float:
    """``json.loads``'s ``parse_float``/``parse_constant``: NaN, Infinity and numbers past a
    float's range (``1e999``) are not in any record we write."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


def params(sampling: Sampling, thinking: Thinking, system: str | None, windowing: dict | None = None) -> dict:
    """The parameters that shape an answer; ``windowing`` (batch) only when not the default."""
    return {**sampling.as_dict(), "system": system, **thinking.as_dict(), **(windowing or {})}


def same_question(a: dict, b: dict) -> bool:
    """Whether two records answer the same question: prompt, model and parameters alike
    (their audio may differ: a file that changed)."""
    return (a.get("prompt"), a.get("model"), a.get("params")) == (b.get("prompt"), b.get("model"), b.get("params"))


def to_record(
    *,
    file: str | list[str],
    prompt: str,
    model: str,
    params: dict,
    result: Result | None = None,
    error: str | None = None,
    sha256: str | None = None,
    key: str | None = None,
    audio_seconds: float | None = None,
    hide_reasoning: bool = False,
    warnings: list[str] | tuple[str, ...] = (),
) -> dict:
    """The one record: an answer (``result``) or a failure (``error``)."""
    record = dict.fromkeys(FIELDS)
    record.update(file=file, sha256=sha256, prompt=prompt, model=model, params=params, key=key, error=error)
    notes = [*warnings, *(result_warnings(result) if result is not None else ())]
    record["warnings"] = notes or None
    if audio_seconds is not None:
        record["audio_seconds"] = round(audio_seconds, 3)
    if result is not None:
        record.update(
            reasoning=None if hide_reasoning else result.reasoning,
            answer=result.answer,
            model=result.model or model,
            usage=result.usage.as_dict(),
            timings=result.timings.as_dict(),
            finish_reason=result.finish_reason,
            windows=result.windows,
        )
    return record


def result_warnings(result: Result) -> list[str]:
    """What a result itself should be read with: windows cut off at the length limit."""
    cut = [w for w in result.windows or () if w.get("finish_reason") == "length"]
    if not cut:
        return []
    total = len(result.windows)
    return [f"{len(cut)} of {total} windows were cut off at the length limit (their answers may be missing)"]


def ask_record(
    request: Request,
    result: Result,
    *,
    hide_reasoning: bool = False,
    conversation: str | None = None,
    turn: int | None = None,
) -> dict:
    names = [a.name for a in request.audios]
    record = to_record(
        warnings=[w for a in request.audios for w in a.warnings],
        file=names[0] if len(names) == 1 else names,
        prompt=request.question,
        model=result.model,
        params=params(request.sampling, request.thinking, request.system),
        result=result,
        audio_seconds=request.audio_seconds,
        hide_reasoning=hide_reasoning,
    )
    return {**record, "conversation": conversation, "turn": turn}


# --- CSV: the same record, flattened --------------------------------------------------------

CSV_FIELDS = [
    "file",
    "sha256",
    "prompt",
    "model",
    "answer",
    "reasoning",
    "error",
    "finish_reason",
    "audio_seconds",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "time_to_first_token",
    "total_seconds",
    "windows",
    "warnings",
    "params",
    "key",
]
#: The columns of CSV files written before ``windows`` and ``warnings``: still read back, and
#: appended to in their own layout.
CSV_FIELDS_V1 = [k for k in CSV_FIELDS if k not in ("windows", "warnings")]
_USAGE = ("prompt_tokens", "completion_tokens", "reasoning_tokens")
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection"):
# such text gets a leading quote, which spreadsheets hide. Text that starts with a quote gets
# one too, so reading back (from_csv_row) is exact.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def _cell(value):
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_START) else value


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def to_csv_row(record: dict) -> dict:
    usage = record.get("usage") or {}
    timings = record.get("timings") or {}
    row = {k: record.get(k) for k in CSV_FIELDS if k in record}
    row.update({k: usage.get(k) for k in _USAGE})
    row["time_to_first_token"] = timings.get("time_to_first_token")
    row["total_seconds"] = timings.get("total")
    row["params"] = json.dumps(record.get("params"), sort_keys=True)
    windows = record.get("windows")
    row["windows"] = len(windows) if windows else None  # CSV keeps how many; JSONL keeps each
    row["warnings"] = json.dumps(record["warnings"]) if record.get("warnings") else None
    return {k: _cell(v) for k, v in row.items()}


def from_csv_row(row: dict) -> dict:
    """The record a CSV row stands for; ValueError when a number or ``params`` does not parse."""
    row = {k: _uncell(v) if isinstance(v, str) else v for k, v in row.items()}

    def text(k):
        return row.get(k) or None

    def num(k):
        v = row.get(k)
        if v in (None, ""):
            return None
        return finite_float(v) if "." in v or "e" in v.lower() or not v.lstrip("-").isdigit() else int(v)

    def strings(k):
        v = row.get(k)
        if not v:
            return None
        value = json.loads(v)
        if not (isinstance(value, list) and all(isinstance(w, str) for w in value)):
            raise ValueError(f"{k} is not a JSON list of strings")
        return value

    windows = num("windows")
    if windows is not None and (not isinstance(windows, int) or not 0 < windows <= 100_000):
        raise ValueError("windows is not a count")

    record = {k: text(k) for k in FIELDS if k in CSV_FIELDS}
    record.update(
        file=row["file"],
        prompt=row.get("prompt"),
        audio_seconds=num("audio_seconds"),
        usage={k: num(k) for k in _USAGE},
        timings={"time_to_first_token": num("time_to_first_token"), "total": num("total_seconds")},
        params=json.loads(row["params"], parse_constant=finite_float) if row.get("params") else None,
        windows=[{} for _ in range(windows)] if windows else None,  # how many; what each said is in JSONL only
        warnings=strings("warnings"),
    )
    return {k: record.get(k) for k in FIELDS}
