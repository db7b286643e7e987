"""The HTML report: one self-contained file, no scripts, nothing fetched.

Jinja2 with autoescape on: every string from a run (names, configs, findings, prompts,
answers) is HTML-escaped, quotes included. The page's Content-Security-Policy allows
inline styles and ``data:`` images only, so even a string that slipped through could
neither run nor load anything. Plots are SVG ``data:`` URIs (see
:mod:`retain.report.figures`).
"""

from __future__ import annotations

import jinja2

from retain.report.content import num, pct
from retain.report.page import Page

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>retain report: {{ page.title }}</title>
<style>
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px;
       padding: 0 24px 48px; color: #1c2833; }
h1 { margin: 24px 0 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #d5d8dc; padding-bottom: 4px; }
h3 { margin-top: 24px; } .muted { color: #626567; } code, pre { font: 12px/1.4 ui-monospace, monospace; }
pre { background: #f4f6f7; padding: 8px; overflow-x: auto; white-space: pre-wrap; word-break: break-word; }
nav a { margin-right: 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 12px; }
.card { border: 1px solid #d5d8dc; border-left: 6px solid #aab7b8; border-radius: 6px; padding: 10px 12px; }
.card h4 { margin: 0; font-size: 12px; text-transform: uppercase; color: #626567; letter-spacing: .03em; }
.card .value { font-size: 22px; font-weight: 600; margin: 4px 0; }
.card ul { margin: 0; padding-left: 16px; font-size: 12px; color: #424949; }
.good { border-left-color: #1e8449; } .bad { border-left-color: #c0392b; } .warn { border-left-color: #d68910; }
.good .value { color: #1e8449; } .bad .value { color: #c0392b; } .warn .value { color: #b9770e; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
th, td { border-bottom: 1px solid #e5e8e8; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f7; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.overall td { font-weight: 600; } td.bad, span.bad { color: #c0392b; font-weight: 600; }
td.good, span.good { color: #1e8449; font-weight: 600; } tr.front td { background: #eaf2f8; }
.wide { overflow-x: auto; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; }
figure { margin: 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeded; }
figcaption { font-size: 12px; color: #626567; }
.sev-blocker { color: #c0392b; font-weight: 600; } .sev-warning { color: #b9770e; font-weight: 600; }
.answer { white-space: pre-wrap; word-break: break-word; font: 12px/1.4 ui-monospace, monospace; }
details > summary { cursor: pointer; font-size: 18px; font-weight: 600; margin: 16px 0 8px; }
section.run, section.sweep { margin-top: 24px; }
</style>
</head>
<body>
<header>
<h1>retain report</h1>
<p class="muted">{{ page.title }} · generated {{ page.generated }} by retain {{ page.version }}</p>
<p class="muted">Inputs: {% for path in page.inputs %}<code>{{ path }}</code>{{ ", " if not loop.last }}{% endfor %}</p>
<nav>
{%- if page.comparison %}<a href="#comparison">Comparison</a>{% endif %}
{%- for sweep in page.sweeps %}<a href="#{{ sweep.anchor }}">{{ sweep.sweep.kind }}: {{ sweep.sweep.name }}</a>{% endfor %}
{%- for section in page.runs %}<a href="#{{ section.anchor }}">{{ section.title }}</a>{% endfor %}
</nav>
</header>

{% macro figure_list(items) -%}
<div class="plots">
{% for title, uri in items.items() %}
<figure class="plot"><img src="{{ uri }}" alt="{{ title }}"><figcaption>{{ title }}</figcaption></figure>
{% endfor %}
</div>
{%- endmacro %}

{% macro cards(items) -%}
<div class="cards">
{% for card in items %}
<div class="card {{ card.tone }}"><h4>{{ card.title }}</h4><div class="value">{{ card.value }}</div>
<ul>{% for line in card.lines %}<li>{{ line }}</li>{% endfor %}</ul></div>
{% endfor %}
</div>
{%- endmacro %}

{% macro findings_table(name, items) -%}
{% if items %}
<div class="wide"><table class="findings {{ name }}">
<tr><th>severity</th><th>finding</th><th>count</th><th>fix</th><th>examples</th></tr>
{% for finding in items %}
<tr><td class="sev-{{ finding.severity }}">{{ finding.severity }}</td>
<td><code>{{ finding.code }}</code> {{ finding.title }}</td><td class="num">{{ finding.count }}</td>
<td>{{ finding.fix }}</td>
<td>{% for example in (finding.examples or [])[:3] %}<div class="answer">{% if example.line %}line {{ example.line }}: {% endif %}{{ (example.text if example.text is defined else example) | string | truncate(240) }}</div>{% endfor %}</td></tr>
{% endfor %}
</table></div>
{% else %}<p class="muted">No {{ name }} findings recorded.</p>{% endif %}
{%- endmacro %}

{% macro run_body(s) -%}
<p class="muted">Run directory <code>{{ s.run.path }}</code>{% if s.run.meta.started_at %}, started {{ s.run.meta.started_at }}{% endif %}
{% if s.run.meta.retain_version %}, retain {{ s.run.meta.retain_version }}{% endif %}{% if s.run.meta.git_commit %}, commit <code>{{ s.run.meta.git_commit[:10] }}</code>{% endif %}.
Status: <strong>{{ s.run.status }}</strong>.</p>
{% if s.run.status == "unfinished" %}<p class="warn"><strong>Unfinished run:</strong> there is no summary.json yet (still training, or stopped before the end). The cards show the last guard check where there is one.</p>{% endif %}
<h3>Summary</h3>
{{ cards(s.cards) }}
{% if s.figures %}<h3>Plots</h3>{{ figure_list(s.figures) }}{% endif %}
<h3>Guard actions</h3>
{% if s.guards %}
<table class="guards"><tr><th>step</th><th>guard</th><th>action</th><th>value</th><th>limit</th><th>message</th></tr>
{% for event in s.guards %}<tr><td class="num">{{ event.step }}</td><td>{{ event.guard }}</td><td>{{ event.action }}</td>
<td class="num">{{ num(event.value) }}</td><td class="num">{{ num(event.threshold) }}</td><td>{{ event.message }}</td></tr>{% endfor %}
</table>
{% else %}<p class="muted">No guard acted{% if not s.run.checks %} (no guard checks ran){% endif %}.</p>{% endif %}
{% if s.forgetting %}
<h3>General probes before and after, per category</h3>
<table class="forgetting"><tr><th>suite</th><th>category</th><th>items</th><th>before</th><th>after</th><th>relative drop</th><th>95% interval</th><th>newly wrong</th><th>newly right</th></tr>
{% for row in s.forgetting %}<tr class="{{ 'overall' if row.overall }}"><td>{{ row.suite }}</td><td>{{ row.category }}</td><td class="num">{{ row.n_items }}</td>
<td class="num">{{ row.before }}</td><td class="num">{{ row.after }}</td><td class="num {{ 'bad' if row.bad }}">{{ row.relative_drop }}</td>
<td class="num">{{ row.interval }}</td><td class="num">{{ row.newly_wrong }}</td><td class="num">{{ row.newly_right }}</td></tr>{% endfor %}
</table>{% endif %}
{% if s.task %}
<h3>Task</h3>
<table class="task"><tr><th>split</th><th>examples</th><th>accuracy</th><th>by log-likelihood</th><th>no answer</th><th>answers given</th><th>broken answers</th></tr>
{% for row in s.task %}<tr><td>{{ row.split }}</td><td class="num">{{ row.n }}</td><td class="num">{{ row.accuracy }}</td><td class="num">{{ row.loglik_accuracy }}</td>
<td class="num">{{ row.unparsed }}</td><td>{{ row.predicted }}</td><td class="num">{{ row.broken }}</td></tr>{% endfor %}
</table>{% endif %}
{% if s.brittleness %}
<h3>Brittleness: perturbed task inputs</h3>
<table class="brittleness"><tr><th>perturbation</th><th>examples</th><th>original</th><th>perturbed</th><th>drop</th><th>answers flipped</th></tr>
{% for row in s.brittleness %}<tr><td>{{ row.name }}</td><td class="num">{{ row.n }}</td><td class="num">{{ row.original }}</td><td class="num">{{ row.perturbed }}</td><td class="num">{{ row.drop }}</td><td class="num">{{ row.flipped }}</td></tr>{% endfor %}
</table>{% endif %}
{% if s.run.kind == "run" %}
<h3>Data audit</h3>{{ findings_table("audit", s.audit) }}
<h3>Pipeline doctor</h3>{{ findings_table("doctor", s.doctor) }}
{% endif %}
<h3>Sample answers before and after</h3>
{% if s.samples %}
<p class="muted">General probe items, newly wrong first, at most a few per category.</p>
<div class="wide"><table class="samples"><tr><th>item</th><th>prompt</th><th>before</th><th>after</th><th>change</th></tr>
{% for sample in s.samples %}<tr><td><code>{{ sample.suite }}/{{ sample.item }}</code></td>
<td class="answer">{{ sample.prompt if sample.prompt is not none else "(prompt not available: the suite at this version could not be loaded)" }}</td>
<td class="answer {{ 'good' if sample.before_correct else ('bad' if sample.before_correct is false) }}">{{ sample.before if sample.before is not none else "n/a" }}</td>
<td class="answer {{ 'good' if sample.after_correct else ('bad' if sample.after_correct is false) }}">{{ sample.after if sample.after is not none else "n/a" }}</td>
<td>{{ sample.change }}</td></tr>{% endfor %}
</table></div>
{% else %}<p class="muted">No probe answers saved (no base_eval.json and final_eval.json).</p>{% endif %}
<h4>Task answers before and after</h4>
{% if s.task_samples %}
<p class="muted">The first examples of each task split, as the base model and the trained model answered them.</p>
<div class="wide"><table class="task-samples"><tr><th>split</th><th>prompt (its end)</th><th>expected</th><th>before</th><th>after</th></tr>
{% for sample in s.task_samples %}<tr><td>{{ sample.split }}</td><td class="answer">{{ sample.prompt }}</td><td class="answer">{{ sample.expected }}</td>
<td class="answer {{ 'good' if sample.before_correct else ('bad' if sample.before_correct is false) }}">{{ sample.before if sample.before is not none else "n/a" }}</td>
<td class="answer {{ 'good' if sample.after_correct else ('bad' if sample.after_correct is false) }}">{{ sample.after if sample.after is not none else "n/a" }}</td></tr>{% endfor %}
</table></div>
{% else %}<p class="muted">{{ page.missing_generations }}</p>{% endif %}
<h4>Broken answers kept by the smoke test and the final evaluation</h4>
{% if s.broken %}
<div class="wide"><table class="broken"><tr><th>where</th><th>prompt</th><th>answer</th><th>flags</th></tr>
{% for row in s.broken[:20] %}<tr><td>{{ row.where }}</td><td class="answer">{{ row.prompt }}</td><td class="answer">{{ row.answer }}</td><td>{{ row.flags }}</td></tr>{% endfor %}
</table></div>
{% else %}<p class="muted">None: no broken answer was recorded.</p>{% endif %}
{% if s.run.log_tail %}<h3>End of log.txt</h3><pre>{{ s.run.log_tail | join("\n") }}</pre>{% endif %}
{% if s.config_text %}<details class="config"><summary style="font-size:14px">Configuration (config.yaml)</summary><pre>{{ s.config_text }}</pre></details>{% endif %}
{%- endmacro %}

{% if page.comparison %}
<section id="comparison" class="comparison">
<h2>Runs side by side</h2>
{% if page.comparison.varying %}<p>Settings that differ: {% for key in page.comparison.varying %}<code>{{ key }}</code>{{ ", " if not loop.last }}{% endfor %}.</p>{% endif %}
<div class="wide"><table class="compare">
<tr><th>run</th><th>status</th><th>method</th><th>settings</th><th>task</th><th>task OOD</th><th>general probes</th><th>forgetting</th><th>KL</th><th>smoke broken</th><th>verdict</th></tr>
{% for row in page.comparison.rows %}
<tr><td><a href="#{{ row.anchor }}">{{ row.name }}</a></td><td>{{ row.status }}</td><td>{{ row.method }}</td><td>{{ row.settings }}</td>
<td class="num">{{ row.task }}</td><td class="num">{{ row.ood }}</td><td class="num">{{ row.probes }}</td>
<td class="num {{ 'bad' if row.forgetting_bad }}">{{ row.forgetting }}</td><td class="num">{{ row.kl }}</td><td class="num">{{ row.smoke }}</td>
<td class="{{ {True: 'good', False: 'bad'}.get(row.ship, '') }}" title="{{ row.reasons }}">{{ {True: "ship", False: "do not ship"}.get(row.ship, "no verdict") }}</td></tr>
{% endfor %}
</table></div>
{{ figure_list(page.comparison.figures) }}
</section>
{% endif %}

{% for sw in page.sweeps %}
<section id="{{ sw.anchor }}" class="sweep">
<h2>{{ sw.sweep.kind | capitalize }}: {{ sw.sweep.name }}</h2>
<p class="muted"><code>{{ sw.sweep.path }}</code> · {{ sw.trials | length }} trials{% for state, count in sw.counts.items() %} · {{ count }} {{ state }}{% endfor %}</p>
{{ figure_list(sw.figures) }}
{% if sw.sweep.table %}
<h3>Recipes (mean ± 95% interval over seeds)</h3>
<table class="recipes"><tr><th>recipe</th><th>task</th><th>task OOD</th><th>general probes</th><th>forgetting</th><th>time vs reference</th><th>seeds</th></tr>
{% for row in sw.sweep.table %}<tr><td>{{ row.recipe }}</td><td class="num">{{ ci(row.task_accuracy) }}</td><td class="num">{{ ci(row.ood_accuracy) }}</td>
<td class="num">{{ ci(row.probe_accuracy) }}</td><td class="num">{{ ci(row.forgetting) }}</td><td class="num">{{ num(row.time_vs_reference) }}</td><td class="num">{{ row.seeds }}</td></tr>{% endfor %}
</table>{% endif %}
<h3>Trials</h3>
<p class="muted">Shaded rows are on the Pareto front: no other trial has both higher task accuracy and less forgetting.</p>
<div class="wide"><table class="trials">
<tr><th>#</th><th>run</th><th>state</th>{% for key in sw.param_keys %}<th>{{ key }}</th>{% endfor %}<th>task</th><th>task OOD</th><th>general probes</th><th>forgetting</th><th>seconds</th><th>error</th></tr>
{% for t in sw.trials %}<tr class="{{ 'front' if t.front }}"><td class="num">{{ t.number }}</td><td>{{ t.name }}</td><td>{{ t.state }}</td>
{% for value in t.params %}<td>{{ value }}</td>{% endfor %}
<td class="num">{{ t.task }}</td><td class="num">{{ t.ood }}</td><td class="num">{{ t.general }}</td><td class="num {{ 'bad' if t.forgetting_bad }}">{{ t.forgetting }}</td>
<td class="num">{{ t.seconds }}</td><td>{{ t.error }}</td></tr>{% endfor %}
</table></div>
{% for name, text in sw.sweep.notes.items() %}<h3>{{ name }}</h3><pre>{{ text }}</pre>{% endfor %}
{% if sw.picked %}
<details class="run" id="{{ sw.picked.anchor }}" open><summary>In detail: {{ sw.picked.title }}</summary>
<p>{{ sw.picked_reason }}.</p>
{{ run_body(sw.picked) }}
</details>
{% else %}<p class="muted">{{ sw.picked_reason }}.</p>{% endif %}
</section>
{% endfor %}

{% for s in page.runs %}
<section id="{{ s.anchor }}" class="run">
<details {{ "open" if s.open }}><summary>{{ "Run" if s.run.kind == "run" else "Evaluation" }}: {{ s.title }}</summary>
{{ run_body(s) }}
</details>
</section>
{% endfor %}
</body>
</html>
"""


def _num(value: object) -> str:
    return num(value)


def _ci(value: object) -> str:
    """Formats a ``[mean, half-width]`` pair from ``compare.json`` as ``40.5% ± 2.0%``."""
    if not isinstance(value, list) or len(value) != 2:
        return "n/a"
    mean, half = value
    return pct(mean) + (f" ± {pct(half)}" if half is not None else "")


_ENVIRONMENT = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True,
                                  lstrip_blocks=True)
_ENVIRONMENT.globals.update(num=_num, ci=_ci, csp=CSP)
_TEMPLATE = _ENVIRONMENT.from_string(TEMPLATE)


def render_html(page: Page) -> str:
    """Returns the report as one self-contained HTML document."""
    return _TEMPLATE.render(page=page)
