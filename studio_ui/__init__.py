"""The studio app's helpers (Streamlit side; ``core/`` never imports this).

Plain Python, unit-tested without Streamlit: ``colors`` (region-map colour finding),
``canvas`` (canvas JSON <-> images), ``jobs`` (the shared queue and worker), ``gallery``
(results on disk with their recipes and editor state), ``methods`` (page settings ->
core requests). Streamlit: ``shared`` (engine, queue, sidebar, progress, results),
``widgets`` (brush, canvas, colour tables), ``restore`` (gallery -> editor).
"""
