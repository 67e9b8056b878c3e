"""The nightly label-disagreement report: which items, classes and labelers to re-check.

``aggregate`` (SQL, in the store) -> ``build`` (statistics, the ``Report`` model) -> ``render`` (HTML with
``plots``) -> ``job`` (the window, the three files). docs/report.md explains every section.
"""
