"""The report as text: the table (aligned for a terminal, or Markdown), the paper's numbers
beside it, the verdicts and the skipped runs."""

HEADERS = (
    "configuration",
    "dataset",
    "n",
    "final val top-1 %\nmean ± std (n)",
    "best val top-1 %\nmean ± std (n)",
    "final val top-5 %\nmean ± std (n)",
    "final train top-1 %\nmean ± std (n)",
    "best of N\n(best val top-1 %)",
    "paper top-1 %",
)
LEGEND = (
    "errors in %; mean ± std over the n seeds of a configuration (sample std, n/a for n=1); "
    "best of N: the lowest best val top-1 error among the N seeds"
)


def cells(row: dict) -> list[str]:
    best = row["best_of_n_val_top1_error"]
    return [
        row["label"],
        row["dataset"],
        str(row["n"]),
        mean_std(row["final_val_top1_error"]),
        mean_std(row["best_val_top1_error"]),
        mean_std(row["final_val_top5_error"]),
        mean_std(row["final_train_top1_error"]),
        f"{best['value']:.2f} (of {best['n']})",
        paper_cell(row["paper"]),
    ]


def mean_std(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    std = f"{stat['std']:.2f}" if stat["std"] is not None else "n/a"
    return f"{stat['mean']:.2f} ± {std}" + (f" ({stat['n']})" if stat["n"] else "")


def paper_cell(paper: dict | None) -> str:
    if paper is None:
        return "-"
    flag = "" if paper["comparable"] else ", not comparable"
    return f"{paper['paper_top1_error']:.2f} ({paper['table']}{flag})"


def table(rows: list[dict]) -> str:
    """The rows aligned in columns under two-line headers."""
    headers = [h.split("\n") + [""] * (2 - len(h.split("\n"))) for h in HEADERS]
    body = [cells(row) for row in rows]
    widths = [max([len(part) for part in headers[i]] + [len(r[i]) for r in body]) for i in range(len(HEADERS))]
    lines = ["  ".join(h[k].ljust(w) for h, w in zip(headers, widths)).rstrip() for k in (0, 1)]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in body]
    return "\n".join(lines + [LEGEND])


def markdown(rows: list[dict]) -> str:
    head = "| " + " | ".join(h.replace("\n", " ") for h in HEADERS) + " |"
    rule = "|" + "|".join("---" for _ in HEADERS) + "|"
    body = ["| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |" for row in rows]
    return "\n".join([head, rule, *body, "", LEGEND])


def paper_notes(rows: list[dict]) -> list[str]:
    """One line per row with a paper number: what it is and whether it compares."""
    notes = []
    for row in rows:
        p = row["paper"]
        if p is None:
            continue
        ours = f"{p['ours_top1_error']:.2f}" if p["ours_top1_error"] is not None else "-"
        spread = f", {p['paper_mean_std'][0]} ± {p['paper_mean_std'][1]} mean" if p["paper_mean_std"] else ""
        verdict = f"comparable, {p['difference']:+.2f} points" if p["comparable"] else p["reason"]
        notes.append(
            f"{row['label']}: paper {p['table']} {p['model']} {p['paper_top1_error']:.2f}% ({p['statistic']}{spread}; "
            f"{p['dataset']} {p['split']}, {p['protocol']}) vs ours {ours}% ({p['ours_statistic']}): {verdict}"
        )
    return notes


def verdict_lines(verdicts: list[dict]) -> list[str]:
    word = {True: "HOLDS", False: "DOES NOT HOLD", None: "UNDECIDED"}
    return [f"{word[v['holds']]}: {v['finding']} ({v['evidence']})" for v in verdicts]


def skipped_lines(skipped: list[dict]) -> list[str]:
    return [f"skipped {s['run_id']} ({s['name']}): {s['status']}, {s['reason']}" for s in skipped]


def report_text(report: dict) -> str:
    """Everything a terminal shows of a report (report.txt is the same)."""
    parts = [table(report["rows"]) if report["rows"] else "no training runs"]
    for title, lines in (
        ("paper", paper_notes(report["rows"])),
        ("verdicts", verdict_lines(report["verdicts"])),
        ("skipped", skipped_lines(report["skipped"])),
    ):
        if lines:
            parts.append(f"{title}:\n" + "\n".join(f"  {line}" for line in lines))
    return "\n\n".join(parts)
