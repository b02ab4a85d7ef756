"""The report's HTML: markdown rendered (Python-Markdown when installed, the built-in renderer
otherwise), nothing left raw; figures with constrained layout and labelled axes."""
from __future__ import annotations

import re

import pytest

from torchmf.report.render import markdown_to_html

REPORT = """# torchmf report

## Nudging

`NudgedSDE` on `ou_linear` (N = 1000), every 4th snapshot of 0.05 assimilated:
- biased (a = 5): final W2 **0.2126**
- nudged, lambda = 10: final W2 0.0952

![nudging_w2.png](nudging_w2.png)

```
Traceback: x < y and `z`
```

_ok, 11.2 s_
"""


@pytest.mark.parametrize("use_library", [True, False])
def test_markdown_is_rendered_not_printed_raw(use_library):
    if use_library:
        pytest.importorskip("markdown", reason="Python-Markdown is the optional 'report' extra")
    page = markdown_to_html(REPORT, use_library=use_library)
    body = page.split("<body>")[1]
    assert "<h1>torchmf report</h1>" in body and "<h2>Nudging</h2>" in body
    assert body.count("<li>") == 2 and "<ul>" in body
    assert "<code>NudgedSDE</code>" in body and "<strong>0.2126</strong>" in body
    assert "<em>ok, 11.2 s</em>" in body and 'src="nudging_w2.png"' in body
    assert "x &lt; y" in body  # code is escaped
    text_outside_code = re.sub(r"<pre>.*?</pre>|<code>.*?</code>", "", body, flags=re.DOTALL)
    assert "`" not in text_outside_code and "\n- " not in text_outside_code and "_ok" not in text_outside_code


def test_figures_need_labelled_axes(tmp_path):
    from torchmf.plots import density_panels, line_plot

    with pytest.raises(ValueError, match="xlabel"):
        line_plot(tmp_path / "a.png", [0, 1], {"a": [0, 1]}, "", "W2 (model length units)")
    path = density_panels(tmp_path / "b.png", {"one": [[0.0, 1.0], [1.0, 0.0]], "two": [[1.0, 0.0], [0.0, 1.0]]},
                          title="density over (x, t)", ylabel="t (model time units)")
    assert path.is_file() and path.stat().st_size > 0
