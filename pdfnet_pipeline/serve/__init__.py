"""`pdfnet-pipeline serve`: a local web page and HTTP API for a trained model.

One module per job: `config` (the `ServeConfig` dataclass), `commands` (the typer command; imports
nothing heavy), `uploads` (request body -> RGB array, or the HTTP error naming the problem),
`engine` (a `Predictor` run on a batch of photos), `batcher` (the bounded queue and the one
worker thread that owns the model), `encode` (arrays -> PNG bytes), `app` (the FastAPI routes) and
`server` (uvicorn, signals, the printed URL). The page's files live in `static/`.
"""
