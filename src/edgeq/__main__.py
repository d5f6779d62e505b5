from edgeq.cli import app

app()
