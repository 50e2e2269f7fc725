"""Korean film news aggregator: feeds and scraped listings in, one feed and a weekly digest out.

The package is laid out along the data flow: :mod:`~aggregator.config` →
:mod:`~aggregator.fetch` → :mod:`~aggregator.sources` → :mod:`~aggregator.normalize`
→ :mod:`~aggregator.dedupe` → :mod:`~aggregator.store`, then
:mod:`~aggregator.publish`, :mod:`~aggregator.digest` / :mod:`~aggregator.render`
and :mod:`~aggregator.deliver`; :mod:`~aggregator.scheduler` runs it all.
"""

__version__ = "0.1.0"
