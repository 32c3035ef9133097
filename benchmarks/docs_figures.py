"""Every figure in README.md and docs/ comes from a results file: this script checks that (and
writes the generated tables).

A figure is written as a link to the file that holds it, with the place in that file as the
link's title, so that a reader can follow it and this script can check it:

    [85.91%](benchmarks/results/demo.json "spikeclip_acc x100")
    [1.34x](benchmarks/results/peer.json "[model=spikformer;dtype=float32].vs_spikingjelly")
    [0.98x](benchmarks/results/corpus_speed_cpu_2core.json "[0].streamed_over_in_memory_speed")

- a JSON file: the title is a path of keys (`a.b`, `[3]` a list index, `[k=v;k2=v2]` the list
  item with those values), then optionally `x100` (a fraction shown as a percentage); the link's
  number must equal the value rounded to the digits shown.
- any other file: the link's text must appear on a line of the file that holds the title.

Tables are generated, between `<!-- table NAME -->` and `<!-- /table -->`, by the renderer NAME
below from its results file; `--write` regenerates them in place.

A number that looks measured (a percentage, a ratio like 1.5x, a time, a size, an energy, a
rate) outside such a link, a table block, code or a link to a results file is an error: it has
no source. Numbers inside backticks are settings, not measurements.

    python benchmarks/docs_figures.py --check          # CI: fails on any figure out of step
    python benchmarks/docs_figures.py --write          # regenerate the table blocks
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)(?:\s+\"([^\"]*)\")?\)")
TABLE = re.compile(r"<!-- table (\S+) -->\n(.*?)<!-- /table -->", re.S)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
# What a measured figure looks like in prose: a percentage, a ratio, or a number with a unit.
UNSOURCED = re.compile(
    r"(?<![\w.])\d[\d,]*(?:\.\d+)?(?:%|x(?![\w])|\s?(?:mJ|MiB|GiB|MB|GB/s|ms|us|images/s|img/s)\b|"
    r"\s?s\b(?![-/]))"
)


class FigureError(Exception):
    pass


def docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _select(items: list, selector: str):
    if selector.isdigit():
        return items[int(selector)]
    wanted = dict(part.split("=", 1) for part in selector.split(";"))
    hits = [it for it in items if all(str(it.get(k)) == v for k, v in wanted.items())]
    if len(hits) != 1:
        raise FigureError(f"[{selector}] matches {len(hits)} rows, not one")
    return hits[0]


def _steps(path: str) -> list[tuple[str, str]]:
    """("key", "") and ("", "selector") steps of a path; brackets may nest in selectors."""
    steps, i = [], 0
    while i < len(path):
        if path[i] == ".":
            i += 1
        elif path[i] == "[":
            depth, j = 0, i
            while j < len(path):
                depth += {"[": 1, "]": -1}.get(path[j], 0)
                if depth == 0:
                    break
                j += 1
            steps.append(("", path[i + 1 : j]))
            i = j + 1
        else:
            j = i
            while j < len(path) and path[j] not in ".[":
                j += 1
            steps.append((path[i:j], ""))
            i = j
    return steps


def json_value(data, path: str):
    """The value at `path` ("a.b[k=v].c", "[2].ms") in data."""
    value = data
    for key, selector in _steps(path):
        if selector:
            if not isinstance(value, list):
                raise FigureError(f"[{selector}] applied to a {type(value).__name__}")
            value = _select(value, selector)
        else:
            if not isinstance(value, dict) or key not in value:
                raise FigureError(f"no key {key!r}")
            value = value[key]
    return value


def _shown(text: str) -> tuple[float, int]:
    """(number, decimals) of the figure as written ("1,031 MiB" -> (1031.0, 0))."""
    m = NUMBER.search(text)
    if m is None:
        raise FigureError(f"no number in {text!r}")
    number = m.group(0).replace(",", "")
    decimals = len(number.split(".")[1]) if "." in number else 0
    return float(number), decimals


def _name(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def check_link(text: str, target: Path, title: str) -> None:
    if not target.exists():
        raise FigureError(f"{_name(target)} does not exist")
    if target.suffix == ".json":
        path, _, scale = title.partition(" x")
        value = json_value(json.loads(target.read_text()), path.strip())
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise FigureError(f"{path} is {value!r}, not a number")
        value *= float(scale) if scale else 1.0
        shown, decimals = _shown(text)
        if round(value, decimals) != shown and f"{value:.{decimals}f}" != f"{shown:.{decimals}f}":
            raise FigureError(f"the file holds {value:.{decimals + 2}f}, the text says {text!r}")
        return
    lines = [line for line in target.read_text().splitlines() if title in line]
    if not lines:
        raise FigureError(f"no line of {target.name} holds {title!r}")
    figure = NUMBER.search(text)
    token = figure.group(0) if figure else text
    if not any(re.search(rf"(?<![\d.]){re.escape(token)}(?![\d])", line) for line in lines):
        raise FigureError(f"{text!r} is not on the line of {target.name} holding {title!r}")


# ---- generated tables ---------------------------------------------------------------------


def _peer_models(name: str = "peer_models_cpu_2core.json") -> str:
    rows = json.loads((RESULTS / name).read_text())
    names = {
        "spikformer": "Spikformer (embed 128, 2 blocks)",
        "spike_driven_transformer": "Spike-driven Transformer (embed 128, 2 blocks)",
        "sew_resnet": "SEW-ResNet (BasicBlock x 2 per stage)",
    }
    lossless = 'accelerate(memory="lossless")'
    columns = ("accelerate(attention=False)", "accelerate()", lossless,
               "spikingjelly + torch.compile", "accelerate() + torch.compile")  # fmt: skip
    out = [
        '| model | dtype | attention=False | accelerate() | memory="lossless" | SpikingJelly '
        "compiled | accelerate() compiled | saved MiB per sample (SpikingJelly -> ours; "
        "lossless) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    seen = []
    for r in rows:
        if (r["model"], r["dtype"]) not in seen:
            seen.append((r["model"], r["dtype"]))
    for model, dtype in seen:
        mine = {r["contender"]: r for r in rows if r["model"] == model and r["dtype"] == dtype}
        base = mine["spikingjelly (as shipped)"]
        ratios = [f"{mine[c]['vs_spikingjelly']:.2f}x" if c in mine else "-" for c in columns]
        ours = mine["accelerate()"]["saved_MiB_per_sample"]
        saved = f"{base['saved_MiB_per_sample']:.3g} -> {ours:.3g}"
        if lossless in mine:
            saved += f"; {mine[lossless]['saved_MiB_per_sample']:.2g}"
        out.append(f"| {names.get(model, model)} | {dtype} | {' | '.join(ratios)} | {saved} |")
    return "\n".join(out) + "\n"


def _energy_frontier(name: str = "energy_frontier_epyc_cpu_2core.json") -> str:
    data = json.loads((RESULTS / name).read_text())
    ann = data["ann"]
    out = [
        "| setting | top-1 | below the ANN twin | mJ per image | of the ANN's | firing | goal |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in data["points"]:
        out.append(
            f"| {p['name']} | {p['top1']:.2%} | {p['points_below_ann']:.2f} points | "
            f"{p['energy_mJ']:.4f} | {p['energy_vs_ann']:.2f} | {p['mean_firing_rate']:.1%} | "
            f"{'met' if p['meets_goal'] else '-'} |"
        )
    out.append(f"| ANN twin | {ann['top1']:.2%} | | {ann['energy_mJ']:.4f} | 1 | | |")
    return "\n".join(out) + "\n"


RENDERERS = {
    "peer_models": _peer_models,  # the AVX-512 EPYC's, before BN + neuron were fused
    "peer_models_avx2": lambda: _peer_models("peer_models_epyc_avx2_cpu_2core.json"),
    "peer_models_spike_convs_avx2": lambda: _peer_models(
        "peer_models_spike_convs_epyc_avx2_cpu_2core.json"
    ),
    "peer_models_bn_pool_avx2": lambda: _peer_models(
        "peer_models_bn_pool_epyc_avx2_cpu_2core_run3.json"  # the Spikformer's median of five
    ),
    "peer_models_winograd_avx2": lambda: _peer_models(
        "peer_models_winograd_epyc_avx2_cpu_2core_run3.json"  # the Spikformer's median of five
    ),
    "energy_frontier": _energy_frontier,  # the AVX-512 EPYC's: every setting
    "energy_frontier_avx2": lambda: _energy_frontier("energy_frontier_epyc_avx2_cpu_2core.json"),
}


def render(name: str) -> str:
    if name not in RENDERERS:
        raise FigureError(f"no table renderer {name!r} (known: {', '.join(RENDERERS)})")
    return RENDERERS[name]()


# ---- the check ----------------------------------------------------------------------------


def _prose(text: str) -> str:
    """text without code blocks, inline code, table blocks and links into the results."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"^    .*$", "", text, flags=re.M)  # indented code
    text = TABLE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.sub(lambda m: "" if "benchmarks/results" in m.group(2) else m.group(1), text)


def problems(paths: list[Path] | None = None) -> list[str]:
    found = []
    for doc in paths or docs():
        text = doc.read_text()
        name = _name(doc)
        for m in LINK.finditer(text):
            label, href, title = m.groups()
            if "benchmarks/results/" not in href or title is None:
                continue
            line = text.count("\n", 0, m.start()) + 1
            try:
                check_link(label, (doc.parent / href).resolve(), title)
            except FigureError as exc:
                found.append(f'{name}:{line}: [{label}] ({href} "{title}"): {exc}')
        for m in TABLE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            try:
                if render(m.group(1)) != m.group(2):
                    found.append(f"{name}:{line}: table {m.group(1)} is not what its file holds "
                                 "(python benchmarks/docs_figures.py --write)")  # fmt: skip
            except FigureError as exc:
                found.append(f"{name}:{line}: table {m.group(1)}: {exc}")
        prose = _prose(text)
        for m in UNSOURCED.finditer(prose):
            snippet = prose[max(0, m.start() - 30) : m.end() + 10].replace("\n", " ")
            found.append(f"{name}: {m.group(0)!r} has no source (...{snippet}...)")
    return found


def write_tables(paths: list[Path] | None = None) -> int:
    changed = 0
    for doc in paths or docs():
        text = doc.read_text()
        new = TABLE.sub(lambda m: f"<!-- table {m.group(1)} -->\n{render(m.group(1))}"
                        "<!-- /table -->", text)  # fmt: skip
        if new != text:
            doc.write_text(new)
            changed += 1
    return changed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="fail on any figure out of step")
    p.add_argument("--write", action="store_true", help="regenerate the table blocks")
    p.add_argument("files", nargs="*", type=Path, help="default: README.md and docs/*.md")
    args = p.parse_args(argv)
    paths = [f.resolve() for f in args.files] or None
    if args.write:
        print(f"{write_tables(paths)} file(s) rewritten")
    found = problems(paths)
    for line in found:
        print(line)
    checked = len(paths or docs())
    print(f"{checked} file(s) checked, {len(found)} problem(s)")
    return 1 if (args.check and found) else 0


if __name__ == "__main__":
    sys.exit(main())
