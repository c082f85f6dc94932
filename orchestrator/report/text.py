"""The report as text: the table (aligned for a terminal, or Markdown), the paper's numbers
beside the final errors, the verdicts and the skipped runs."""

HEADERS = (
    "configuration",
    "dataset",
    "n",
    "final val top-1 %\nmean ± std (n)",
    "paper top-1 %\n(its statistic)",
    "final val top-5 %\nmean ± std (n)",
    "final train top-1 %\nmean ± std (n)",
    "best-epoch val top-1 %\nepoch chosen on this set",
)
LEGEND = (
    "errors in %, at the end of training (the last epoch); mean ± std over the n seeds of a configuration "
    "(sample std, n/a for n=1). The paper's column stands beside the final errors; the last column picks each "
    "run's best epoch on the very set it reports (for CIFAR-10 and Fashion-MNIST their test set): optimistic, "
    "never the paper's statistic"
)


def cells(row: dict) -> list[str]:
    return [
        row["label"],
        row["dataset"],
        str(row["n"]),
        mean_std(row["final_val_top1_error"]),
        paper_cell(row["paper"]),
        mean_std(row["final_val_top5_error"]),
        mean_std(row["final_train_top1_error"]),
        mean_std(row["best_epoch_val_top1_error"]),
    ]


def mean_std(stat: dict) -> str:
    if stat["mean"] is None:
        return "-"
    std = f"{stat['std']:.2f}" if stat["std"] is not None else "n/a"
    return f"{stat['mean']:.2f} ± {std}" + (f" ({stat['n']})" if stat["n"] else "")


def paper_cell(paper: dict | None) -> str:
    """'6.97 (Table 6, one run)', '6.43 best of 5, 6.61 ± 0.16 mean (Table 6)', '... not comparable'."""
    if paper is None:
        return "-"
    if paper["paper_mean_std"]:
        mean, std, runs = paper["paper_mean_std"]
        text = f"{paper['paper_top1_error']:.2f} best of {runs}, {mean:.2f} ± {std:.2f} mean ({paper['table']})"
    else:
        text = f"{paper['paper_top1_error']:.2f} ({paper['table']}, {paper['statistic']})"
    return text + ("" if paper["comparable"] else ", not comparable")


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
    """One line per row with a paper number: the paper's statistic and ours, and whether they compare."""
    notes = []
    for row in rows:
        p = row["paper"]
        if p is None:
            continue
        theirs = f"{p['paper_top1_error']:.2f}% ({p['statistic']})"
        if p["paper_mean_std"]:
            mean, std, runs = p["paper_mean_std"]
            theirs += f", mean {mean} ± {std} over {runs}"
        ours = f"{mean_std(p['ours'])} ({p['ours_statistic']})"
        if p["ours_best_of_n"]:
            best = p["ours_best_of_n"]
            ours += f", best of {best['n']} {best['value']:.2f}%"
        if p["comparable"]:
            verdict = f"comparable, {p['difference']:+.2f} points"
            if p.get("best_of_n_difference") is not None:
                verdict += f" (mean against mean), {p['best_of_n_difference']:+.2f} (best of N against best of N)"
        else:
            verdict = p["reason"]
        notes.append(
            f"{row['label']}: paper {p['table']} {p['model']} {theirs}, {p['dataset']} {p['split']}, {p['protocol']}; "
            f"ours {ours}: {verdict}"
        )
    return notes


def verdict_lines(verdicts: list[dict]) -> list[str]:
    return [f"{v['verdict'].upper()}: {v['finding']} ({v['evidence']})" for v in verdicts]


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
