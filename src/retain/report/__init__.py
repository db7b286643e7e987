"""``retain report``: one self-contained HTML report and a Markdown summary of runs and sweeps.

Data flows one way: :mod:`~retain.report.sources` reads run directories, sweeps,
comparisons and eval results; :mod:`~retain.report.content` and
:mod:`~retain.report.analysis` decide what they say; :mod:`~retain.report.figures` draws
the plots; :mod:`~retain.report.page` puts it together; :mod:`~retain.report.html` and
:mod:`~retain.report.markdown` lay it out.
"""

from retain.report.build import ReportFiles, build_report, default_output

__all__ = ["ReportFiles", "build_report", "default_output"]
