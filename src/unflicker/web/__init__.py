"""`unflicker serve`: a local web page over the library, for people who do not use a terminal.

    store.py   the work folder, per-browser sessions, uploads, limits and retention
    jobs.py    settings -> RunConfig, and the one-at-a-time queue that runs jobs in child processes
    worker.py  the child process: one `unflicker.pipeline.deflicker_file` call (a preview or a run)
    app.py     the HTTP routes (Starlette) and the checks every request passes
    server.py  binding, the printed address, shutdown
    page.html  the page itself (no external resources)

Needs the `web` extra (starlette, uvicorn): `pip install unflicker[web]`.
"""
