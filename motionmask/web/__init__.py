"""The web console: live frames and masks per camera, the learner's curves, exports and events,
JSON endpoints and /metrics, served by `motionmask run` (web: section) or by `motionmask console`
for a daemon elsewhere. Read-only. See docs/console.md.

    config.py   the web: section (loopback unless a token is set)
    feed.py     what the console knows: status, masks, train.jsonl, manifests (outside-client view)
    stream.py   newest picture per camera, latest-frame-wins per viewer
    app.py      routes (Starlette)
    metrics.py  /metrics (prometheus_client)
    server.py   listening socket, uvicorn
    process.py  the daemon's console process
"""
