"""The cross-tokenizer alignment figure: one example's receiver tokens and the sender tokens they read.

Both models tokenize the sender's string (the task's `prompts.sender`); receiver token r reads the sender
positions whose characters overlap its own (channels/kv/tokens.py, as the transfer does: position 0 of each
model is its attention sink, read by nobody). The example shown is the first eval row, among the short ones,
where the two tokenizations disagree both ways (a receiver token reading several sender tokens and a sender
token read by several receiver tokens), so the figure shows what alignment does.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ...channels.kv.tokens import align, char_spans  # noqa: E402
from ...report import STYLE, save_figure, write_table  # noqa: E402

SHORT = 32   # receiver tokens at most, for a readable figure


def alignment_rows(string: str, sender_tokenizer, receiver_tokenizer) -> pd.DataFrame:
    """One row per receiver position: its token, characters, and the sender positions and tokens it reads."""
    s_ids, s_spans = char_spans(sender_tokenizer, string)
    r_ids, r_spans = char_spans(receiver_tokenizer, string)
    alignment = align(r_spans, s_spans, skip={0})
    records = []
    for r, ((a, b), lo, hi) in enumerate(zip(r_spans, alignment.lo, alignment.hi)):
        read = [s for s in range(lo, hi) if alignment.used[s]] if r > 0 else []
        records.append({"receiver position": r, "receiver token": _shown(receiver_tokenizer, r_ids[r]),
                        "characters": f"[{a}, {b})", "sender positions": f"[{read[0]}, {read[-1] + 1})" if read else "-",
                        "sender tokens": " + ".join(_shown(sender_tokenizer, s_ids[s]) for s in read),
                        "_start": a, "_end": b, "_read": read})
    frame = pd.DataFrame(records)
    frame.attrs["sender"] = [(_shown(sender_tokenizer, t), a, b) for t, (a, b) in zip(s_ids, s_spans)]
    return frame


def _shown(tokenizer, token: int) -> str:
    return repr(tokenizer.convert_ids_to_tokens(int(token)))[1:-1]


def disagreement(frame: pd.DataFrame) -> tuple[int, int]:
    """(receiver tokens reading > 1 sender token, sender tokens read by > 1 receiver token)."""
    many = sum(len(read) > 1 for read in frame._read)
    counts: dict[int, int] = {}
    for read in frame._read:
        for s in read:
            counts[s] = counts.get(s, 0) + 1
    return many, sum(c > 1 for c in counts.values())


def pick(strings: list[str], sender_tokenizer, receiver_tokenizer) -> tuple[int, pd.DataFrame]:
    """(index, rows) of the first short string whose tokenizations disagree both ways, else of the string
    with the most disagreement (the first one on a tie)."""
    best = None
    for i, string in enumerate(strings):
        frame = alignment_rows(string, sender_tokenizer, receiver_tokenizer)
        if len(frame) > SHORT:
            continue
        many, shared = disagreement(frame)
        if many and shared:
            return i, frame
        if best is None or many + shared > best[0]:
            best = (many + shared, i, frame)
    if best is None:   # every string is long: the first one
        return 0, alignment_rows(strings[0], sender_tokenizer, receiver_tokenizer)
    return best[1], best[2]


def figure(frame: pd.DataFrame, out: Path, title: str, names: tuple[str, str]) -> list[Path]:
    """Sender tokens on top, receiver tokens below, both placed by their characters, a line from each receiver
    token to every sender token it reads; and the same as a table."""
    sender = frame.attrs["sender"]
    end = max(b for _, _, b in sender) or 1
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(min(18, 2 + 0.16 * end), 2.6))
        centre = lambda a, b: (a + b) / 2 if b > a else a - 0.5  # noqa: E731  (special tokens: before their text)
        for y, tokens, colour in ((1.0, sender, "tab:blue"),
                                  (0.0, [(t, a, b) for t, a, b in zip(frame["receiver token"], frame._start, frame._end)],
                                   "tab:orange")):
            for k, (token, a, b) in enumerate(tokens):
                ax.text(centre(a, b), y + (0.12 if y else -0.12) * (1 if k % 2 else 2), token, ha="center",
                        va="center", fontsize=6, color=colour, rotation=0,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": colour, "lw": 0.5})
        for (a, b, read) in zip(frame._start, frame._end, frame._read):
            for s in read:
                ax.plot([centre(a, b), centre(*sender[s][1:])], [0.0, 1.0], color="grey", lw=0.5, alpha=0.7)
        ax.set(xlim=(-2, end + 1), ylim=(-0.45, 1.45), yticks=[0, 1], yticklabels=[names[1], names[0]],
               xlabel="character of the sender's string", title=title)
        save_figure(fig, out, "a line joins each receiver token to every sender token sharing a character with it; "
                              "position 0 of each model (its attention sink) is read by nobody")
        plt.close(fig)
    table = frame.drop(columns=["_start", "_end", "_read"]).set_index("receiver position")
    write_table(table, out, title, "dense_alignment",
                ["each receiver position reads the sender positions sharing a character with it (position 0 of "
                 "each model is its attention sink: read by nobody, the receiver keeps its own)"])
    return [out.with_suffix(".png"), out.with_suffix(".md")]
