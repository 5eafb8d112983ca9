"""The benchmark's results as markdown, for a terminal and for the README."""

from __future__ import annotations

from typing import Any

from .cells import BASELINES

#: Between a range's ends, and for a figure that is missing.
DASH = "\u2013"


def _fps(value: float | None) -> str:
    if value is None:
        return DASH
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def _us(value: float) -> str:
    return f"{value:.0f}"


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f} MiB"


def header(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    return [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} cores, {machine['python']}, "
        f"{machine['system']}; {versions}.",
        f"Command: `{results.get('command', 'python -m bench')}`",
    ]


def _legend(results: dict[str, Any]) -> str:
    return (
        f"{results['rounds']} rounds after {results['warmup']} shorter warm-up round(s), "
        "discarded; the servers' order rotates each round. fps: the median of the rounds "
        f"[min{DASH}max]; vs a baseline: the median over the rounds of this row's fps / "
        "the baseline's in the same round, same client (above 1: faster); in a paced "
        "cell, where every server keeps up, the baseline's p50 latency / this row's. "
        "CPU µs/frame: the CPU time of the server's (or the client's) process, every "
        f"thread, user and system, per frame answered, median [min{DASH}max] of the "
        "rounds; CPU vs a baseline: the baseline's / this row's, paired by round "
        "likewise (above 1: cheaper). Latency: from sending a frame to its "
        "acknowledgement, over all the rounds' frames. No-op: every server reads the "
        "first and the last byte of each frame and answers without inferences "
        "(avaproto's through a mapping of the segment, as the baselines)."
    )


def _spread(values: dict[str, Any], show: Any) -> str:
    if values["median"] is None:
        return "error"
    return f"{show(values['median'])} [{show(values['min'])}{DASH}{show(values['max'])}]"


def throughput_table(results: dict[str, Any]) -> list[str]:
    if not results["cells"]:
        return []
    servers = {row["server"] for cell in results["cells"] for row in cell["rows"]}
    baselines = [name for name in BASELINES if name in servers]
    columns = [
        "cell",
        "server",
        "client",
        f"fps median [min{DASH}max]",
        *(f"vs {name}" for name in baselines),
        "server CPU µs/frame",
        *(f"CPU vs {name}" for name in baselines),
        "client CPU µs/frame",
        "latency p50 / p99",
    ]
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * (len(columns) - 3)) + " |",
    ]
    for cell in results["cells"]:
        for row in cell["rows"]:
            latency = row["latency_ms"]
            shown = (
                f"{latency['p50']:.1f} / {latency['p99']:.1f} ms"
                if cell["latency"] and latency["p50"] is not None
                else ""
            )
            client_cpu = row["client_cpu_us"]["median"]
            cells = [
                cell["name"],
                row["server"],
                row["client"],
                _spread(row["fps"], _fps),
                *(_ratio(row["ratio"].get(name)) for name in baselines),
                _spread(row["server_cpu_us"], _us),
                *(_ratio(row["cpu_ratio"].get(name)) for name in baselines),
                DASH if client_cpu is None else _us(client_cpu),
                shown,
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def cell_legend(results: dict[str, Any]) -> list[str]:
    lines = []
    for cell in results["cells"]:
        load = f"{cell['frames']} frames per stream per run"
        if cell["streams"] > 1:
            load += f", {cell['streams']} streams at once"
        window = (
            f"window {cell['window']}" if not cell["rate"] else f"paced at {cell['rate']:g} fps"
        )
        if cell["transfer"] == "shm":
            load += (
                "; every frame written into its slot"
                if results.get("rewrite_frames")
                else "; each slot written once, then holding the frame"
            )
        lines.append(f"- **{cell['name']}**: {cell['title']}; {window}; {load}.")
    return lines


def errors(results: dict[str, Any]) -> list[str]:
    lines = []
    for cell in results["cells"]:
        for row in cell["rows"]:
            for error in row["errors"]:
                first = error.splitlines()[0]
                lines.append(f"- {cell['name']}, {row['server']}, {row['client']}: {first}")
    return lines


def rss_lines(results: dict[str, Any]) -> list[str]:
    rss = results.get("rss")
    if not rss:
        return []
    growth = rss["rss_after"] - rss["rss_before"]
    text = (
        f"RSS of avaproto's server ({rss['width']}x{rss['height']} {rss['transfer']}, "
        f"{rss['client']} client, window 8): {_mib(rss['rss_before'])} after "
        f"{rss['warmup_frames']} frames, {_mib(rss['rss_after'])} after {rss['frames']:,} "
        f"more ({growth / 2**20:+.1f} MiB); peak {_mib(rss['peak'])}"
    )
    if rss.get("fps"):
        text += f"; {rss['fps']:.0f} fps over the {rss['frames']:,} frames"
    if rss.get("server_cpu_us"):
        text += f", {rss['server_cpu_us']:.0f} µs of server CPU per frame"
    if rss.get("error"):
        text += f"; error: {rss['error'].splitlines()[0]}"
    return [text + "."]


def copies_lines(results: dict[str, Any], top: int = 6) -> list[str]:
    measured = results.get("copies")
    if not measured:
        return []
    unavailable = measured.get("unavailable")
    lines = [
        f"Frame copies in avaproto's server ({measured['client']} client; method in "
        "bench/copies.py)"
        + (
            f"; counts not measured: {unavailable}."
            if unavailable
            else ", counted by glibc's mtrace:"
        ),
    ]
    if not unavailable:
        lines += [
            "",
            "| transfer | frame | frame-sized allocations per sample | "
            "bytes in blocks ≥ 64 KiB per frame byte |",
            "| --- | --- | ---: | ---: |",
        ]
        for row in measured["rows"]:
            lines.append(
                f"| {row['transfer']} | {row['width']}x{row['height']} | "
                f"{row['frame_sized_per_sample']:.2f} | {row['large_bytes_per_frame']:.2f} |"
            )
    for key, whose in (("where", "the server"), ("client_where", "avaproto's client")):
        if not any(key in row for row in measured["rows"]):
            continue
        lines += [
            "",
            f"Where {whose} allocates large blocks, by line (frames' worth per sample; the "
            "total, then the lines):",
            "",
        ]
        for row in measured["rows"]:
            where = row.get(key, [])
            total = sum(line["frames_per_sample"] for line in where)
            shown = [line for line in where if line["frames_per_sample"] >= 0.05][:top]
            listed = "; ".join(
                f"`{line['line']}` {line['frames_per_sample']:.2f}" for line in shown
            )
            lines.append(
                f"- {row['transfer']} {row['width']}x{row['height']}: {total:.2f}"
                + (f": {listed}" if listed else "")
            )
    errors = [row["error"].splitlines()[0] for row in measured["rows"] if row.get("error")]
    if errors:
        lines += ["", f"Errors while tracing: {'; '.join(errors)}"]
    return lines


def markdown(results: dict[str, Any]) -> str:
    sections = [header(results)]
    if results["cells"]:
        sections += [[_legend(results)], throughput_table(results), cell_legend(results)]
    for extra in (rss_lines(results), copies_lines(results), errors(results)):
        if extra:
            sections.append(extra)
    sections.append([f"The run took {results['seconds']:.0f} s."])
    return "\n\n".join("\n".join(section) for section in sections) + "\n"
