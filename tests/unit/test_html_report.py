"""The one-page HTML report renders its tables and inlined plot in a real browser."""

from __future__ import annotations

import re
from pathlib import Path

from components.reporting import html_page, sweep_table
from tests.browser import rendered_dom


def test_the_page_renders_the_markdown_tables_and_the_inlined_plot(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot = tmp_path / "frontier.png"
    plt.figure(figsize=(2, 2))
    plt.plot([0, 1], [0, 1])
    plt.savefig(plot)
    plt.close()
    stat = {"mean": 0.41, "ci_low": 0.4, "ci_high": 0.42}
    report = {"test": {"all": {"n": 1615, "recall_at_1": stat, "ndcg_at_3": stat, "valid_rate": 0.99}, "decode": {"tokens_per_forward": 2.5, "decode_tokens_per_s": 900.0}}}
    summary = {"evaluations": {"SFT+RL": report}, "final": "CFT+OPD+RL", "sweep": {"0.9": report}, "speed": {}}
    markdown = f"# Diffusion-GR2 recipe\n\n## Threshold sweep\n\n{sweep_table(summary)}\n\n- [recipe run](http://127.0.0.1:5000/#/runs/abc)\n"
    page = tmp_path / "report.html"
    page.write_text(html_page(markdown, "Diffusion-GR2 recipe", [plot]))

    dom = rendered_dom(page)
    assert "<title>Diffusion-GR2 recipe</title>" in dom and "<h2>Threshold sweep</h2>" in dom
    rows = re.findall(r"<tr>(.*?)</tr>", dom, flags=re.S)
    cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in rows]
    assert cells[0][:3] == ["decoder", "users", "Recall@1"] and cells[1][:3] == ["AR GR2", "1,615", "0.4100"]
    assert cells[2][0] == "CFT+OPD+RL tau=0.9"
    assert '<a href="http://127.0.0.1:5000/#/runs/abc">recipe run</a>' in dom
    assert re.search(r'<img alt="frontier" src="data:image/png;base64,[A-Za-z0-9+/=]{100,}">', dom)
